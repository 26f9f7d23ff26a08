"""Every paper experiment at tiny scale (`scale=tiny`): the same token arithmetic as the real
models, and an end-to-end run (train every stage, chain the stages, evaluate) on small synthetic
datasets in the official layouts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import compose_train
from medgrounder.summary import summarize
from medgrounder.tables import TABLES
from medgrounder.train import run

EXPERIMENT_DIR = Path(__file__).parents[1] / "conf/experiment"
PAPER_EXPERIMENTS = sorted(p.stem for p in EXPERIMENT_DIR.glob("*.yaml") if p.stem not in ("demo", "pfmvg_demo"))
LITEGPT = [e for e in PAPER_EXPERIMENTS if e.startswith("litegpt")]
PFMVG = [e for e in PAPER_EXPERIMENTS if e.startswith("pfmvg")]


def test_the_issue_s_experiments_are_all_there():
    assert set(PAPER_EXPERIMENTS) >= {
        "litegpt_dual", "litegpt_biomedclip", "litegpt_pubmedclip", "litegpt_minigptv2", "litegpt_grounding_token",
        "pfmvg", "pfmvg_stage2_only", "pfmvg_stage1_only", "pfmvg_zero_shot"}
    for name in PAPER_EXPERIMENTS:
        head = (EXPERIMENT_DIR / f"{name}.yaml").read_text()
        assert head.startswith("# @package _global_")
        assert f"python -m medgrounder.train +experiment={name}" in head
        # the paper's numbers live once, in medgrounder.tables; the header says where
        tables = [t for t, table in TABLES.items() if name in table.experiments]
        assert tables and f"python -m medgrounder.tables {tables[0]}" in head, name


def _arithmetic(cfg) -> dict:
    """Image size, tokens per tower, merge and visual tokens, towers built on the meta device."""
    from medgrounder.models.fusion import merged_token_count, resolve_merge
    from medgrounder.summary import _without_weights

    model = OmegaConf.to_container(cfg.model, resolve=True)
    with torch.device("meta"):
        encoder = instantiate(_without_weights(model["encoder"]))
    towers = list(encoder.towers) if hasattr(encoder, "towers") else [encoder]
    tokens = [t.num_tokens for t in towers]
    merge = resolve_merge(model["merge"], tokens, model.get("visual_tokens"))
    return {"image_size": model["image_size"], "tokens_per_tower": tokens, "merge": (merge, model["merge_mode"]),
            "visual_tokens": merged_token_count(tokens, merge, model["merge_mode"]),
            "projector_layers": 1 if model["projector"].get("hidden") is None else 2,
            "widths": [t.width for t in towers], "llm": model["llm"], "init_from": model.get("init_from")}


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_tiny_switch_keeps_the_token_arithmetic(name, tmp_path):
    full = _arithmetic(compose_train([f"+experiment={name}", f"paths.output_dir={tmp_path}"]))
    tiny = _arithmetic(compose_train([f"+experiment={name}", "scale=tiny", f"paths.output_dir={tmp_path}"]))
    for key in ("image_size", "tokens_per_tower", "merge", "visual_tokens", "projector_layers"):
        assert tiny[key] == full[key], key
    assert all(t < f for t, f in zip(tiny["widths"], full["widths"], strict=True))
    assert full["llm"]["pretrained"] and not tiny["llm"]["pretrained"]
    assert (tiny["llm"]["train_mode"], tiny["llm"]["dtype"], tiny["llm"]["quantization"]) == ("full", "fp32", None)
    assert full["llm"]["train_mode"] == "lora"
    assert full["init_from"]["minigptv2"] and not tiny["init_from"]["minigptv2"]


def test_summary_of_a_tiny_experiment_is_the_tiny_model(tmp_path):
    full = summarize(compose_train(["+experiment=pfmvg", f"paths.output_dir={tmp_path}"]))
    tiny = summarize(compose_train(["+experiment=pfmvg", "scale=tiny", f"paths.output_dir={tmp_path}"]))
    assert tiny["visual_tokens"] == full["visual_tokens"] == 256
    assert tiny["towers"][0]["tokens"] == full["towers"][0]["tokens"] == 1024
    assert tiny["total_params"] < full["total_params"] / 1000


def test_full_scale_experiments_need_no_stand_in_pretraining(tmp_path):
    for name in PAPER_EXPERIMENTS:
        assert compose_train([f"+experiment={name}", f"paths.output_dir={tmp_path}"]).tower_pretraining is None
        assert compose_train([f"+experiment={name}", "scale=tiny", f"paths.output_dir={tmp_path}"]).tower_pretraining


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="session")
def synth_roots(tmp_path_factory, synth_vindr_root):
    from medgrounder.data.captions.synth import synth_captions
    from medgrounder.data.mscxr.synth import synth_mscxr

    base = tmp_path_factory.mktemp("pfmvg_data")
    synth_mscxr(base / "ms-cxr", n=30, seed=1, min_side=96, max_side=160)
    synth_captions(base / "captions", n=16, seed=1, min_side=64, max_side=96)
    return {"vindr": synth_vindr_root, "mscxr": base / "ms-cxr", "captions": base / "captions"}


def _point_data_at(data, roots) -> None:
    """Use the session's small synthetic datasets, small batches, no worker processes."""
    target = data._target_.rsplit(".", 1)[-1]
    if target == "MultiTaskDataModule":
        for task in data.tasks.values():
            _point_data_at(task, roots)
        data.root = str(roots["mscxr"])
        return
    data.synth = None
    if target == "VinDrDataModule":
        data.update(root=str(roots["vindr"]), batch_size=4, eval_batch_size=8, decode_workers=1, num_workers=0)
    elif target == "MSCXRDataModule":
        data.update(root=str(roots["mscxr"]), image_root=str(roots["mscxr"]), batch_size=2, eval_batch_size=16,
                    decode_workers=1, num_workers=0)
    else:
        data.update(root=str(roots["captions"]), batch_size=2, eval_batch_size=8, eval_limit=2, num_workers=0)


def tiny_experiment(name: str, out: Path, roots: dict, steps: int = 2):
    cfg = compose_train([f"+experiment={name}", "scale=tiny", f"paths.output_dir={out}", "~logger.wandb",
                         "tower_pretraining.steps=2", f"tower_pretraining.cache_dir={out}/towers",
                         "model.max_new_tokens=10", "check_generation_budgets=false", "trainer.enable_progress_bar=false", "trainer.limit_val_batches=1",
                         "num_figure_images=2"])
    _point_data_at(cfg.data, roots)
    for stage in cfg.stages.values():
        stage.max_new_tokens = None  # the experiments' budgets, cut to model.max_new_tokens for speed
        if stage.max_steps != 0:  # 0: evaluation only (the ablations without a stage)
            stage.max_steps, stage.max_epochs = steps, -1
    return cfg


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", LITEGPT)
def test_litegpt_experiments_run_end_to_end_at_tiny_scale(name, tmp_path, synth_roots):
    out = tmp_path / "run"
    cfg = tiny_experiment(name, out, synth_roots)
    assert cfg.model.llm.quantization is None and cfg.trainer.precision == "32-true"
    metrics = run(cfg)
    if name == "litegpt_grounding_token":  # Table 6: the localization stage only
        assert set(metrics) == {"vindr_identify"} and not (out / "checkpoints" / "vqa.pt").exists()
    else:
        assert set(metrics) == {"vindr_identify", "vindr_vqa"}
        assert not _same(_weights(out / "checkpoints" / "identify.pt"), _weights(out / "checkpoints" / "vqa.pt"))
    assert (out / "checkpoints" / "identify.pt").is_file()
    token = "[grounding]" if name == "litegpt_grounding_token" else "[identify]"
    localisation = [r for r in _rows(out) if r["task"] != "vqa"]
    assert localisation and all(token in r["prompt"] for r in localisation)


@pytest.mark.slow
@pytest.mark.parametrize("name", PFMVG)
def test_pfmvg_experiments_run_end_to_end_at_tiny_scale(name, tmp_path, synth_roots):
    out = tmp_path / "run"
    cfg = tiny_experiment(name, out, synth_roots)
    assert cfg.model.image_size == 448 and cfg.model.merge == 4
    resolved = OmegaConf.to_container(cfg, resolve=True)
    metrics = run(cfg)
    m = metrics["mscxr_refer"]
    assert set(metrics) == {"mscxr_refer"}
    for key in ("iou/mean", "iou/weighted", "dice/mean", "dice/weighted", "baseline/iou/mean", "valid_rate"):
        assert 0.0 <= m[key] <= 1.0, key
    rows = _rows(out)
    assert {r["task"] for r in rows} == {"refer"} and len(rows) == m["num_samples"]
    assert all(r["category"] and r["gt_boxes"] and "[refer]" in r["prompt"] and r["label_text"] in r["prompt"]
               for r in rows)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert "mean-box baseline" in (out / "tables.md").read_text() and (out / "boxes.png").is_file()

    stages = list(resolved["stages"])
    ckpt = {s: _weights(out / "checkpoints" / f"{s}.pt") for s in stages}
    assert stages == {"pfmvg": ["caption", "refer"], "pfmvg_stage1_only": ["caption", "refer"]}.get(name, ["refer"])
    L.seed_everything(resolved["seed"])
    initial = {k: v for k, v in instantiate(cfg.model).trainable_state_dict().items()}
    if name == "pfmvg":  # stage 2 continues from stage 1's weights and trains them further
        assert not _same(ckpt["caption"], initial) and not _same(ckpt["refer"], ckpt["caption"])
        _rebuild_from_checkpoint(out, metrics, rows)
    elif name == "pfmvg_stage1_only":  # [refer] evaluated with stage 1's weights, untouched
        assert not _same(ckpt["caption"], initial) and _same(ckpt["refer"], ckpt["caption"])
    elif name == "pfmvg_zero_shot":  # no fine-tuning at all
        assert _same(ckpt["refer"], initial)
        # Re-running the command reuses the [refer] evaluation and draws its figure again.
        boxes = (out / "boxes.png").read_bytes()
        (out / "boxes.png").unlink()
        assert run(cfg) == metrics
        assert (out / "boxes.png").read_bytes() == boxes
    else:
        assert not _same(ckpt["refer"], initial)


def _rebuild_from_checkpoint(out: Path, metrics: dict, rows: list[dict]) -> None:
    """evaluate and predict rebuild the two-stage model from refer.pt: same answers, same metrics."""
    from medgrounder.evaluate import evaluate_checkpoint
    from medgrounder.predict import predict

    again = evaluate_checkpoint(out / "checkpoints" / "refer.pt", out / "eval", num_figure_images=1)
    assert again == metrics
    row = rows[0]
    image = _image_of(out, row["image_id"])
    result = predict(out / "checkpoints" / "refer.pt", image, out / "predict", phrase=row["label_text"])
    assert result["answer"] == row["prediction"] and result["task"] == "refer"
    assert result["prompt"] == row["prompt"]


def _image_of(out: Path, image_id: str) -> str:
    cfg = OmegaConf.create(torch.load(out / "checkpoints" / "refer.pt", weights_only=False)["config"])
    return next(str(p) for p in Path(cfg.data.tasks.refer.image_root).rglob(f"{image_id}.jpg"))


@pytest.mark.parametrize("preset", ["mscxr", "captions", "pfmvg", "synthetic_mscxr", "synthetic_pfmvg"])
def test_pfmvg_data_presets_compose_at_both_scales(preset, tmp_path):
    for scale in ("full", "tiny"):
        cfg = compose_train([f"data={preset}", f"scale={scale}", f"paths.output_dir={tmp_path}",
                             "paths.data_dir=/data"])
        data = OmegaConf.to_container(cfg.data, resolve=True)
        parts = data["tasks"].values() if "tasks" in data else [data]
        for part in parts:
            synthetic = scale == "tiny" or preset.startswith("synthetic")
            assert bool(part["synth"]) == synthetic, (scale, part["_target_"])
            roots = [s["root"] for s in part["sources"].values()] if "sources" in part else [part["root"]]
            assert all(r.startswith("/data/synthetic_") == synthetic for r in roots), roots
