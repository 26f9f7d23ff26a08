"""Hydra multirun: run directories named after the command, a 3-job sweep with one job failing
on purpose (the others finish, each in its own directory with its own W&B runs grouped by the
sweep, and the summary lists all three), and the summary writer on its own."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import train_cli
from medgrounder.utils.resolvers import slug
from medgrounder.utils.sweep import write_status, write_summary


def test_run_directory_is_named_after_the_overrides(tmp_path):
    assert slug([]) == slug(["+experiment=litegpt_dual"]) == "default"
    assert slug(["model/encoder=biomedclip,pubmedclip", "seed=1"]) == "model.encoder=biomedclip,pubmedclip,seed=1"
    assert slug(["run_stages=[vqa]", "x='a b'"]) == "run_stages=vqa,x=ab"
    long = slug([f"data.root=/very/long/path/{'x' * 100}"])
    assert len(long) <= 80 and long != slug([f"data.root=/very/long/path/{'y' * 100}"])
    from hydra import compose, initialize_config_module

    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=demo", "seed=3"], return_hydra_config=True)
    assert cfg.hydra.run.dir == "outputs/demo/seed=3"
    assert cfg.hydra.sweep.dir == "multirun/demo/seed=3"


def test_summary_marks_failed_and_killed_jobs(tmp_path):
    for job, status in (("0", "done"), ("1", "failed"), ("2", "running"), ("10", "done")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n- data.batch_size=2\n")
        write_status(tmp_path / job, status, ValueError("boom") if status == "failed" else None)
        if status == "done":
            (tmp_path / job / "metrics.json").write_text(json.dumps({"vindr_vqa": {"global": 1}, "vindr_identify": {
                "acc@0.3": int(job) / 100, "valid_rate": 1.0}}))
    rows = write_summary(tmp_path)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "done"), ("1", "failed"), ("2", "incomplete"), ("10", "done")]
    md = (tmp_path / "summary.md").read_text()
    assert "2 of 4 jobs done" in md and "Every job: `data.batch_size=2`" in md
    assert "| 10 | `seed=10` | done | 1.0000 | 0.1000 |" in md
    assert "job 1 failed: ValueError: boom" in md and "job 2 incomplete" in md
    with open(tmp_path / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["vindr_identify/acc@0.3"] for r in table] == ["0.0", "", "", "0.1"]


@pytest.mark.slow
def test_sweep_runs_every_job_and_writes_its_summary(synth_vindr_root, tmp_path):
    """The issue's sweep over towers at tiny scale: BiomedCLIP's 196 and PubMedCLIP's 49 tokens
    merge into LiteGPT's 49 visual tokens (model.merge=auto), EVA's 256 do not: job 1 fails at
    start-up, jobs 0 and 2 train and evaluate."""
    args = [f"data.root={synth_vindr_root}", "data.synth=null", "data.batch_size=4", "data.eval_batch_size=8",
            "data.decode_workers=1", "tower_pretraining=null", "model.max_new_tokens=8", "check_generation_budgets=false", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "num_figure_images=1", "stages.identify.max_steps=2",
            "stages.vqa.max_steps=1", "model/encoder=biomedclip,eva_vit_g,pubmedclip"]
    result = train_cli(["-m", *args], cwd=tmp_path)
    said = result.stdout + result.stderr
    assert result.returncode == 1, said[-3000:]
    assert "1 of 3 jobs did not finish (jobs 1)" in said
    sweeps = list((tmp_path / "multirun" / "train").iterdir())
    assert len(sweeps) == 1, "one sweep directory, named after the command"
    sweep = sweeps[0]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]

    summary = json.loads((sweep / "summary.json").read_text())
    assert [(r["job"], r["status"]) for r in summary] == [("0", "done"), ("1", "failed"), ("2", "done")]
    assert "model.visual_tokens=49" in summary[1]["error"]
    assert summary[0]["overrides"][-1] == "model/encoder=biomedclip"
    for r in (summary[0], summary[2]):
        assert 0 <= r["metrics"]["vindr_identify/acc@0.3"] <= 1 and "vindr_vqa/global/micro/f1" in r["metrics"]
    md = (sweep / "summary.md").read_text()
    assert "| 1 | `model/encoder=eva_vit_g` | failed |" in md and "2 of 3 jobs done" in md

    for job in ("0", "2"):  # its own directory, its own W&B runs (one per stage), grouped by the sweep
        out = sweep / job
        assert (out / "metrics.json").is_file() and (out / "checkpoints" / "vqa.pt").is_file()
        ids = json.loads((out / "wandb_ids.json").read_text())
        runs = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
        assert sorted(p.stem.removeprefix("run-") for p in runs) == sorted(ids.values())
        for p in runs:
            assert f"train:{sweep.name}".encode() in p.read_bytes()
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "failed"
