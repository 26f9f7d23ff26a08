"""Start-up checks: a run without its data or weights stops before any work, saying what is
missing, where it was looked for and where to get it."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from medgrounder.data.captions.layout import MIMIC_SPLIT_CSV
from medgrounder.data.mscxr.layout import MSCXR_CSV
from medgrounder.data.vindr.layout import PHYSIONET_FILES
from medgrounder.data.vindr.prepared import is_prepared

SOURCES = {
    "vindr": "VinDr-CXR 1.0.0 from https://physionet.org/content/vindr-cxr/1.0.0/ "
    "(credentialed access); set paths.vindr_root=DIR or VINDR_ROOT",
    "mscxr": "MS-CXR from https://physionet.org/content/ms-cxr/ with the MIMIC-CXR-JPG images "
    "(https://physionet.org/content/mimic-cxr-jpg/, credentialed access); set paths.mscxr_root / MSCXR_ROOT "
    "(the csv) and paths.mimic_cxr_jpg_root / MIMIC_CXR_JPG_ROOT (the folder holding files/)",
    "roco": "ROCO (radiology subset) from https://github.com/razorx89/roco-dataset; set paths.roco_root / ROCO_ROOT "
    "to the folder holding data/",
    "clef2022": "ImageCLEFmedical 2022 caption prediction (https://www.imageclef.org/2022/medical/caption, "
    "registration); set paths.clef2022_root / CLEF2022_ROOT to the folder holding caption_prediction_*.csv",
    "mimic": "MIMIC-CXR reports (https://physionet.org/content/mimic-cxr/) and MIMIC-CXR-JPG "
    "(https://physionet.org/content/mimic-cxr-jpg/), credentialed access; set paths.mimic_cxr_jpg_root / "
    "MIMIC_CXR_JPG_ROOT and paths.mimic_cxr_reports_root / MIMIC_CXR_REPORTS_ROOT",
}
# Data modules of this suite by _target_ (or data.dataset); multitask holds one per task.
DATA_MODULES = {
    "medgrounder.data.vindr.datamodule.VinDrDataModule": "vindr",
    "medgrounder.data.mscxr.datamodule.MSCXRDataModule": "mscxr",
    "medgrounder.data.captions.datamodule.CaptionDataModule": "captions",
    "medgrounder.data.multitask.MultiTaskDataModule": "multitask",
}
# Weight files (not hub repositories): config key suffix -> where to get them.
WEIGHT_FILES = {
    "checkpoint": "BLIP-2's EVA ViT-g: https://storage.googleapis.com/sfr-vision-language-research/"
    "LAVIS/models/BLIP2/eva_vit_g.pth",
    "minigptv2": "MiniGPT-v2's stage-3 checkpoint (minigptv2_checkpoint.pth) linked from "
    "https://github.com/Vision-CAIR/MiniGPT-4",
}


class MissingInputError(RuntimeError):
    """Raised before training when data or weights are absent."""


def _hub_cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def _check_weights(key: str, ref: str, marker: str) -> str | None:
    """``ref`` is a hub id, ``hf-hub:ID``, ``local-dir:PATH`` or a directory."""
    if ref.startswith("local-dir:"):
        ref = ref.removeprefix("local-dir:")
    elif ref.startswith("hf-hub:"):
        ref = ref.removeprefix("hf-hub:")
    if ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists():
        path = Path(ref).expanduser()
        return None if path.exists() else f"{key}: local weights directory {path} does not exist"
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if offline and not _hub_cached(ref, marker):
        return (
            f"{key}: '{ref}' is not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
            f"and HF_HUB_OFFLINE is set. Download it with `hf download {ref}` "
            f"(https://huggingface.co/{ref}) or point {key} at a local directory."
        )
    return None


def _weight_refs(model: DictConfig):
    encoder = model.encoder
    towers = list(encoder.towers.values()) if "towers" in encoder else [encoder]
    for i, tower in enumerate(towers):
        prefix = f"model.encoder.towers[{i}]" if "towers" in encoder else "model.encoder"
        if tower.get("checkpoint"):
            yield f"{prefix}.checkpoint", tower.checkpoint, "file:checkpoint"
        if tower.get("pretrained"):
            yield f"{prefix}.pretrained", tower.pretrained, "config.json"
        name = tower.get("model_name", "")
        if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
            yield f"{prefix}.model_name", name, "open_clip_config.json"
    if model.llm.get("pretrained"):
        yield "model.llm.pretrained", model.llm.pretrained, "config.json"
    if (model.get("init_from") or {}).get("minigptv2"):
        yield "model.init_from.minigptv2", model.init_from.minigptv2, "file:minigptv2"


def _check_file(key: str, ref: str, kind: str) -> str | None:
    path = Path(ref).expanduser()
    if path.is_file():
        return None
    return f"{key}: weights file {path.resolve()} does not exist. Get {WEIGHT_FILES[kind]}."


def _check_sources(sources: DictConfig) -> list[str]:
    """Caption sources: each corpus's folder (or split csv) must exist."""
    problems = []
    for name, src in sources.items():
        target = str(src.get("_target_", ""))
        kind = "roco" if target.endswith("RocoCaptions") else "clef2022" if "CLEF" in target else "mimic"
        marker = Path(src.root) / {"roco": "data", "clef2022": "", "mimic": src.get("split_csv") or MIMIC_SPLIT_CSV}[kind]
        if not marker.exists() and not marker.with_name(marker.name + ".gz").is_file():
            problems.append(f"data caption source {name}: {marker.resolve()} does not exist. Get {SOURCES[kind]}.")
    return problems


def _check_data(data: DictConfig) -> list[str]:
    if data.get("synth"):
        return []
    dataset = data.get("dataset") or DATA_MODULES.get(str(data.get("_target_", "")), "vindr")
    if dataset == "multitask":
        return [p for task in data.tasks.values() for p in _check_data(task)]
    if dataset == "captions":
        return _check_sources(data.sources)
    root = Path(data.root)
    problems = []
    if dataset == "mscxr":
        csv_name = data.get("csv_name") or MSCXR_CSV
        if not (root / csv_name).is_file():
            problems.append(f"data.root={root.resolve()} lacks {csv_name}. Get {SOURCES['mscxr']}.")
        image_root = Path(data.get("image_root") or root)
        if not (image_root / "files").is_dir():
            problems.append(f"MS-CXR images: {(image_root / 'files').resolve()} does not exist. Get {SOURCES['mscxr']}.")
        return problems
    if dataset == "vindr":
        # A prepared dir (`python -m medgrounder.prepare vindr`) replaces the raw layout.
        if not is_prepared(root):
            missing = [f for f in PHYSIONET_FILES if not (root / f).exists()]
            if missing:
                problems.append(
                    f"data.root={root.resolve()} lacks {', '.join(missing)} (or the annotations.jsonl "
                    f"of `python -m medgrounder.prepare vindr`). Get {SOURCES['vindr']}."
                )
    elif not root.exists():
        problems.append(f"data.root={root.resolve()} does not exist. Get {SOURCES.get(dataset, dataset)}.")
    if dataset not in DATA_MODULES.values():
        problems.append(
            f"data.dataset={dataset}: this suite has no data module for it yet (available: "
            f"{', '.join(sorted(DATA_MODULES.values()))}), so this experiment cannot train; its model and "
            "configuration can be checked with `python -m medgrounder.summary`."
        )
    return problems


def check_inputs(cfg: DictConfig) -> None:
    problems = _check_data(cfg.data)
    weights = list(_weight_refs(cfg.model))
    loaded_towers = [key for key, _, _ in weights if key.startswith("model.encoder")]
    if cfg.get("tower_pretraining") and loaded_towers:
        raise ValueError(f"tower_pretraining is for randomly initialised tiny towers, but {', '.join(loaded_towers)} "
                         "load pretrained weights: set tower_pretraining=null")
    for key, ref, marker in weights:
        if marker.startswith("file:"):
            msg = _check_file(key, str(ref), marker.removeprefix("file:"))
        else:
            msg = _check_weights(key, str(ref), marker)
        if msg:
            problems.append(msg)
    if problems:
        raise MissingInputError("Missing inputs:\n  - " + "\n  - ".join(problems))
