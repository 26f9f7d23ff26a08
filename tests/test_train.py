"""The real entry points on a small synthetic VinDr-CXR: config composition, start-up checks,
both stages with fast_dev_run, determinism, and a short run whose loss falls."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import compose_train, tiny_run_overrides
from medgrounder.train import run
from medgrounder.utils.preflight import MissingInputError, check_inputs

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf/experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name, tmp_path):
    cfg = compose_train([f"+experiment={name}", f"paths.output_dir={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.task_name == name
    assert list(cfg.stages) and all("task" in s for s in cfg.stages.values())


def test_wrong_key_fails_at_compose_time(tmp_path):
    with pytest.raises(Exception, match="learning_rate"):
        compose_train(["model.optim.learning_rate=1", f"paths.output_dir={tmp_path}"])


def test_real_experiment_without_data_stops_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = compose_train(["+experiment=litegpt_dual", f"paths.vindr_root={tmp_path}/nowhere",
                         f"paths.output_dir={tmp_path}/out"])
    with pytest.raises(MissingInputError) as err:
        run(cfg)
    msg = str(err.value)
    assert f"{tmp_path}/nowhere" in msg and "annotations/annotations_train.csv" in msg
    assert "physionet.org/content/vindr-cxr" in msg
    assert "meta-llama/Llama-2-7b-chat-hf" in msg and "hf download" in msg
    assert "microsoft/BiomedCLIP" in msg and "flaviagiammarino/pubmed-clip-vit-base-patch32" in msg


def test_pfmvg_without_data_names_the_layout_files(tmp_path):
    """The csv names come from the dataset layouts when the config leaves them to the defaults."""
    cfg = compose_train(["+experiment=pfmvg", f"paths.data_dir={tmp_path}/nowhere", f"paths.output_dir={tmp_path}/out"])
    with pytest.raises(MissingInputError) as err:
        check_inputs(cfg)
    msg = str(err.value)
    assert f"{tmp_path}/nowhere/ms-cxr lacks MS_CXR_Local_Alignment_v1.1.0.csv" in msg
    assert f"{tmp_path}/nowhere/mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv does not exist" in msg
    assert f"{tmp_path}/nowhere/roco-dataset/data does not exist" in msg


def test_both_stages_fast_dev_run(synth_vindr_root, tmp_path):
    out = tmp_path / "run"
    cfg = compose_train([*tiny_run_overrides(synth_vindr_root, out), "+trainer.fast_dev_run=true"])
    metrics = run(cfg)
    assert set(metrics) == {"vindr_identify", "vindr_vqa"}
    for name in ("metrics.json", "tables.md", "predictions.jsonl", "boxes.png",
                 "checkpoints/identify.pt", "checkpoints/vqa.pt"):
        assert (out / name).is_file(), name
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, "an offline W&B run per stage"
    tables = sorted(p.name.split("_")[0] for run_dir in runs for p in run_dir.rglob("*.table.json"))
    assert tables == ["answers", "answers", "boxes"], tables  # [identify] also gets its box pictures
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"identify", "vqa"}
    assert {"id", "image_id", "task", "prompt", "reference", "prediction", "image_width", "image_height"} <= set(rows[0])
    assert json.loads((out / "metrics.json").read_text())["vindr_identify"]["num_samples"] == len(
        [r for r in rows if r["task"] == "identify"])


def _short_run(root, out, steps=200):
    cfg = compose_train([*tiny_run_overrides(root, out), f"stages.identify.max_steps={steps}", "data.batch_size=8",
                         "stages.vqa.max_steps=2", "model.optim.lr=3e-3", "model.optim.warmup_steps=10",
                         "model.max_new_tokens=100"])
    return run(cfg)


def test_short_run_learns_and_is_deterministic(synth_vindr_root, tmp_path):
    first = _short_run(synth_vindr_root, tmp_path / "a")
    losses = _losses(tmp_path / "a" / "csv" / "identify" / "metrics.csv")
    assert losses[-1] < 0.25 * losses[0], losses
    # After 200 steps the answers follow the template: they parse (150 was on the edge: 0.0 or 1.0
    # depending on the data order). The template, not the box geometry: valid_rate also refuses a
    # box with x1 >= x2 or y1 >= y2 (issue 18 item 10), which this short run still writes.
    from medgrounder.tasks.identify import reference_findings

    rows = [json.loads(line) for line in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    answers = [r["prediction"] for r in rows if r["task"] == "identify"]
    assert sum(reference_findings(a).valid for a in answers) >= 0.75 * len(answers)
    assert 0 < first["vindr_identify"]["valid_rate"] <= 1
    second = _short_run(synth_vindr_root, tmp_path / "b")
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()
    assert first == second


def _losses(csv_path: Path) -> list[float]:
    import csv

    with open(csv_path) as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_evaluate_rebuilds_from_checkpoint_and_checks_keys(synth_vindr_root, tmp_path):
    import torch

    from medgrounder.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    trained = run(compose_train([*tiny_run_overrides(synth_vindr_root, out), "+trainer.fast_dev_run=true"]))
    metrics = evaluate_checkpoint(out / "checkpoints" / "vqa.pt", tmp_path / "eval", num_figure_images=1)
    assert metrics == {"vindr_vqa": trained["vindr_vqa"]}
    assert [p.name.split("_")[0] for p in (tmp_path / "eval" / "wandb").rglob("*.table.json")] == ["answers"]
    assert (tmp_path / "eval" / "predictions.jsonl").read_text() == "".join(
        line + "\n" for line in (out / "predictions.jsonl").read_text().splitlines() if '"task": "vqa"' in line)

    ckpt = torch.load(out / "checkpoints" / "vqa.pt", weights_only=False)
    dropped = sorted(ckpt["state_dict"])[0]
    del ckpt["state_dict"][dropped]
    torch.save(ckpt, tmp_path / "broken.pt")
    with pytest.raises(KeyError, match=re.escape(dropped)):
        evaluate_checkpoint(tmp_path / "broken.pt", tmp_path / "eval2")

    ckpt = torch.load(out / "checkpoints" / "vqa.pt", weights_only=True)
    first = sorted(ckpt["pretrained_towers"])[0]  # the tiny towers travel in the checkpoint:
    ckpt["pretrained_towers"][first] = ckpt["pretrained_towers"][first] + 1  # others than trained with
    torch.save(ckpt, tmp_path / "reseeded.pt")
    with pytest.raises(ValueError, match="frozen weights"):
        evaluate_checkpoint(tmp_path / "reseeded.pt", tmp_path / "eval3")
