"""Start-up checks: a run without its data or weights stops before any work, saying what is
missing, where it was looked for and where to get it. Each datamodule (and caption source)
declares its own inputs (``missing_inputs``); the weights are checked here."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

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


def _check_data(data: DictConfig) -> list[str]:
    """What the configured datamodule says it lacks (built without loading anything)."""
    from hydra.utils import instantiate

    return instantiate(data).missing_inputs()


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
