"""Distributed training: ``trainer=ddp`` with 2 CPU processes (gloo) trains on disjoint shards of
the stream (VinDr, and both PFMVG stages) and evaluates every test sample once; the FSDP / DeepSpeed / SLURM configs compose and
build; each rank finds its own GPU."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import compose_train, pfmvg_overrides, train_cli
from medgrounder.data.sampler import StreamSampler, shuffled
from medgrounder.models.llm import local_rank


def _batches_by_step(probe) -> dict[tuple[str, int], dict[int, list[str]]]:
    """``{(task, step): {rank: sample ids}}`` as the probe callback recorded them on 2 ranks."""
    seen: dict[tuple[str, int], dict[int, list[str]]] = defaultdict(dict)
    for rank in (0, 1):
        for line in (probe / f"batches_rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            assert row["world"] == 2
            seen[(row["task"], row["step"])][rank] = row["ids"]
    return seen


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_evaluate(synth_vindr_root, tmp_path):
    out, probe = tmp_path / "run", tmp_path / "batches"
    args = [f"data.root={synth_vindr_root}", "data.synth=null", "data.batch_size=2", "data.eval_batch_size=4",
            "data.decode_workers=1", "tower_pretraining=null", "model.max_new_tokens=8", "check_generation_budgets=false", "trainer=ddp",
            "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.enable_progress_bar=false", "num_figure_images=1", "logger.wandb.mode=disabled",
            "stages.identify.max_steps=6", "stages.vqa.max_steps=2", f"hydra.run.dir={out}",
            "+callbacks.record._target_=probes.RecordBatches", f"+callbacks.record.dir={probe}"]
    result = train_cli(args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    seen = _batches_by_step(probe)
    assert sorted(seen) == [*(("identify", s) for s in range(6)), *(("vqa", s) for s in range(2))]
    # Step b of each rank is its half of global batch b of the one seeded stream.
    dm = instantiate(compose_train([f"data.root={synth_vindr_root}", "data.synth=null", "data.decode_workers=1",
                                    "paths.output_dir=."]).data)
    dm.setup()
    for task in ("identify", "vqa"):
        ids = [f"{s.record.image_id}:{task}" for s in dm.samples("train", task)]
        stream = StreamSampler(shuffled(len(ids), seed=0), batch_size=2, world_size=2)
        for (t, step), by_rank in seen.items():
            if t == task:
                assert by_rank[0] + by_rank[1] == [ids[i] for i in stream.global_batch_keys(step)], (task, step)
                assert not set(by_rank[0]) & set(by_rank[1])

    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    for task, key in (("identify", "vindr_identify"), ("vqa", "vindr_vqa")):
        ids = [r["id"] for r in rows if r["task"] == task]
        assert len(ids) == len(set(ids)) == metrics[key]["num_samples"] == 8  # the test split, once each
    assert (out / "checkpoints" / "identify.pt").is_file() and (out / "checkpoints" / "vqa.pt").is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_ddp_pfmvg_stages_train_on_disjoint_halves_of_one_epoch(synth_pfmvg_dir, tmp_path):
    """One epoch of each stage (caption mixture, then MS-CXR [refer]) on 2 processes: step b of
    each rank is its half of global batch b, and the union over the epoch is the epoch one
    process with the global batch would train on."""
    out, probe = tmp_path / "run", tmp_path / "batches"
    args = [*pfmvg_overrides(synth_pfmvg_dir), "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", "stages.caption.max_epochs=1", "stages.caption.max_steps=-1",
            "stages.refer.max_epochs=1", "stages.refer.max_steps=-1", "trainer.limit_val_batches=0",
            f"hydra.run.dir={out}", "+callbacks.record._target_=probes.RecordBatches", f"+callbacks.record.dir={probe}"]
    result = train_cli(args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    seen = _batches_by_step(probe)
    dm = instantiate(compose_train([*pfmvg_overrides(synth_pfmvg_dir), "paths.output_dir=."]).data)
    dm.setup()
    for task in ("caption", "refer"):
        data = dm.for_task(task)
        dataset = data.dataset("train")
        one = StreamSampler(data.training_keys, batch_size=4, whole_passes=True)  # one process, the global batch
        epoch = [dataset[k]["meta"]["id"] for k in one]
        steps = sorted(s for t, s in seen if t == task)
        assert steps == list(range(len(epoch) // 4)) and len(steps) > 3
        for step in steps:
            by_rank = seen[(task, step)]
            assert by_rank[0] + by_rank[1] == epoch[step * 4 : (step + 1) * 4], (task, step)
            assert not set(by_rank[0]) & set(by_rank[1])
        assert sorted(i for s in steps for r in (0, 1) for i in seen[(task, s)][r]) == sorted(epoch)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in rows if r["task"] == "refer"]
    assert len(ids) == len(set(ids)) == len(dm.for_task("refer").samples("test"))  # the test split, once each


def _compose(overrides):
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=.", *overrides], return_hydra_config=True)


def test_fsdp_and_deepspeed_are_selectable():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    fsdp = _compose(["trainer=fsdp"]).trainer
    strategy = instantiate(fsdp.strategy)
    assert isinstance(strategy, FSDPStrategy) and fsdp.use_distributed_sampler is False
    assert isinstance(instantiate(_compose(["trainer=ddp"]).trainer.strategy), DDPStrategy)
    ds = _compose(["trainer=deepspeed", "trainer.strategy.stage=3"]).trainer
    assert ds.strategy._target_.endswith("DeepSpeedStrategy") and ds.strategy.stage == 3


def test_slurm_launcher_config():
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

    from medgrounder.utils.sweep import SweepCallback

    cfg = _compose(["hydra/launcher=submitit_slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                    "hydra.launcher.partition=gpu", "hydra.launcher.account=lab"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["partition"] == "gpu" and launcher["max_num_timeout"] > 0
    assert isinstance(instantiate(cfg.hydra.launcher), SlurmLauncher)
    bad = _compose(["hydra/launcher=submitit_slurm", "trainer=ddp"])  # devices: auto
    with pytest.raises(SystemExit, match=r"trainer\.devices"):
        SweepCallback().on_multirun_start(bad)


def test_each_rank_finds_its_gpu(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("SLURM_LOCALID", raising=False)
    assert local_rank() == 0
    monkeypatch.setenv("SLURM_LOCALID", "3")  # srun (submitit) sets this per task
    assert local_rank() == 3
    monkeypatch.setenv("LOCAL_RANK", "1")     # Lightning's launcher and torchrun set this
    assert local_rank() == 1


def test_local_multirun_ddp_is_refused_with_the_key(tmp_path):
    """Lightning would re-run the whole sweep in each DDP process; validate() says what to do."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from medgrounder.train import validate

    overrides = ["trainer=ddp", "trainer.devices=2", f"paths.output_dir={tmp_path}"]
    validate(compose_train(overrides))  # a single run: Lightning starts the processes
    cfg = _compose(overrides)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ValueError, match=r"trainer\.strategy"):
            validate(compose_train(overrides))
    finally:
        HydraConfig.instance().cfg = None
