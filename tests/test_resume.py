"""Schedules and exact resume: the training stream sampler, a run SIGKILLed mid-epoch (twice)
and re-run with the same command ending bit for bit like an uninterrupted one (VinDr; and a
PFMVG [refer] stage), two stages as two
commands equal to one, and the start-up checks of the stage settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import compose_train, pfmvg_overrides, tiny_run_overrides, train_cli
from medgrounder.data.sampler import StreamSampler, shuffled
from medgrounder.train import check_run_dir, run, run_identity, validate


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run several times faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ the stream sampler
def test_stream_epochs_continue_the_stream_and_each_pass_is_a_permutation():
    s = StreamSampler(shuffled(10, seed=7), batch_size=3, epoch_batches=4)
    first, second = list(s), list(s)
    assert len(first) == len(s) == 12
    stream = first + second  # 24 positions: passes 0, 1 and part of 2
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # each pass reshuffled
    assert shuffled(10, seed=8)(0) != stream[:10]
    # without iters_per_epoch an epoch is the batches that fit in one pass
    assert len(StreamSampler(shuffled(10, seed=7), batch_size=3)) == 9


def test_stream_is_sharded_over_ranks():
    world, batch = 3, 2
    ranks = [list(StreamSampler(shuffled(17, seed=1), batch_size=batch, epoch_batches=5, rank=r, world_size=world))
             for r in range(world)]
    single = list(StreamSampler(shuffled(17, seed=1), batch_size=batch * world, epoch_batches=5))
    for b in range(5):  # global batch b = rank 0's slice, then rank 1's, ...
        assert [i for r in ranks for i in r[b * batch : (b + 1) * batch]] == single[b * batch * world : (b + 1) * batch * world]
    assert len(set(single[:17])) == 17  # one pass: no sample twice, on any rank


def test_stream_resumes_at_any_batch():
    full = StreamSampler(shuffled(9, seed=3), batch_size=2, epoch_batches=4)
    epochs = [list(full) for _ in range(3)]
    resumed = StreamSampler(shuffled(9, seed=3), batch_size=2, epoch_batches=4, start=6)  # epoch 1, batch 2
    assert list(resumed) == epochs[1][4:]  # the rest of epoch 1
    assert list(resumed) == epochs[2]      # then whole epochs
    assert resumed.epoch_begin == 8


# ------------------------------------------------------------------ killed and re-run
def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_one(synth_vindr_root, tmp_path):
    """SIGKILL in [identify] at step 8 (epochs of 5 batches, checkpoints every 3 steps: resumes
    from step 6, mid-epoch), then SIGKILL in [vqa] (resumes with [identify] done and evaluated),
    then the same command to the end: metrics, predictions and weights equal an uninterrupted
    run's. Attention dropout makes the result depend on the restored RNG too."""
    args = [f"data.root={synth_vindr_root}", "data.synth=null", "data.batch_size=4", "data.eval_batch_size=8",
            "data.decode_workers=1", "tower_pretraining=null", "model.max_new_tokens=12", "check_generation_budgets=false",
            "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "num_figure_images=1",
            "stages.identify.max_steps=12", "stages.identify.iters_per_epoch=5", "stages.vqa.max_steps=5",
            "checkpointing.every_n_train_steps=3", "trainer.log_every_n_steps=2",
            "+model.llm.config.attention_dropout=0.2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = train_cli([*args, f"hydra.run.dir={whole}"])
    assert done.returncode == 0, done.stderr[-3000:]

    def kill_at(task, step):
        return [f"hydra.run.dir={killed}", "+callbacks.kill._target_=probes.KillAtStep",
                f"+callbacks.kill.task={task}", f"+callbacks.kill.step={step}"]

    first = train_cli([*args, *kill_at("identify", 8)])
    assert first.returncode == -9, first.stderr[-3000:]
    resume_ckpt = killed / "checkpoints" / "resume" / "identify" / "last.ckpt"
    state = torch.load(resume_ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 6 and state["VinDrDataModule"]["samples"] == 6 * 4  # mid-epoch 1
    assert not (killed / "checkpoints" / "identify.pt").exists()
    assert json.loads((killed / "status.json").read_text())["status"] == "running"

    second = train_cli([*args, *kill_at("vqa", 4)])
    assert second.returncode == -9, second.stderr[-3000:]
    assert "stage vqa: task" in second.stdout + second.stderr
    assert (killed / "checkpoints" / "identify.pt").is_file()
    assert (killed / "evaluation" / "identify" / "metrics.json").is_file()
    assert (killed / "checkpoints" / "resume" / "vqa" / "last.ckpt").is_file()

    third = train_cli([*args, f"hydra.run.dir={killed}"])
    assert third.returncode == 0, third.stderr[-3000:]
    said = third.stdout + third.stderr
    assert "stage identify: finished before" in said and "evaluation reused" in said and "stage vqa: resuming" in said
    assert (killed / "metrics.json").read_bytes() == (whole / "metrics.json").read_bytes()
    assert (killed / "predictions.jsonl").read_bytes() == (whole / "predictions.jsonl").read_bytes()
    for stage in ("identify", "vqa"):
        a, b = _weights(whole / "checkpoints" / f"{stage}.pt"), _weights(killed / "checkpoints" / f"{stage}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    assert not (killed / "checkpoints" / "resume").exists()
    assert json.loads((killed / "status.json").read_text())["status"] == "done"
    # W&B: identify ran in the first two commands, vqa in the last two, each resumed stage in its
    # run of before (the id kept in wandb_ids.json).
    ids = json.loads((killed / "wandb_ids.json").read_text())
    assert len(list((killed / "wandb").glob("offline-run-*"))) == 4
    assert all(len(list((killed / "wandb").glob(f"offline-run-*-{i}"))) == 2 for i in ids.values())


@pytest.mark.slow
def test_killed_pfmvg_stage_resumes_bitwise(synth_pfmvg_dir, tmp_path):
    """[refer] (11 batches an epoch, validated at its end) SIGKILLed at step 14, resumed from the
    checkpoint of step 12 (epoch 1, batch 1: crops and instructions of the second pass), ends with the weights,
    metrics and predictions of an uninterrupted run; attention dropout makes them depend on the
    restored RNG too."""
    args = [*pfmvg_overrides(synth_pfmvg_dir), "run_stages=[refer]", "stages.refer.max_steps=16",
            "checkpointing.every_n_train_steps=3", "trainer.limit_val_batches=1",
            "+model.llm.config.attention_dropout=0.2"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = train_cli([*args, f"hydra.run.dir={whole}"])
    assert done.returncode == 0, done.stderr[-3000:]
    first = train_cli([*args, f"hydra.run.dir={killed}", "+callbacks.kill._target_=probes.KillAtStep",
                       "+callbacks.kill.task=refer", "+callbacks.kill.step=14"])
    assert first.returncode == -9, first.stderr[-3000:]
    state = torch.load(killed / "checkpoints" / "resume" / "refer" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert state["global_step"] == 12 and state["MultiTaskDataModule"] == {
        "task": "refer", "samples": 12 * 2, "global_batch": 2, "epoch_batches": 11}
    again = train_cli([*args, f"hydra.run.dir={killed}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage refer: resuming" in again.stdout + again.stderr
    a, b = _weights(whole / "checkpoints" / "refer.pt"), _weights(killed / "checkpoints" / "refer.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("metrics.json", "predictions.jsonl"):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name


# ------------------------------------------------------------------ stages as separate commands
def _tiny(root, out, *extra):
    return compose_train([*tiny_run_overrides(root, out), "tower_pretraining=null", "evaluate=false",
                          "logger.wandb.mode=disabled", "stages.identify.max_steps=4", "stages.vqa.max_steps=3",
                          "trainer.log_every_n_steps=2", *extra])


def test_two_commands_equal_one(synth_vindr_root, tmp_path):
    run(_tiny(synth_vindr_root, tmp_path / "one"))
    run(_tiny(synth_vindr_root, tmp_path / "s1", "run_stages=[identify]"))
    assert not (tmp_path / "s1" / "checkpoints" / "vqa.pt").exists()
    run(_tiny(synth_vindr_root, tmp_path / "s2", "run_stages=[vqa]", f"stages.vqa.init_from={tmp_path / 's1'}"))
    assert not (tmp_path / "s2" / "checkpoints" / "identify.pt").exists()
    a, b = _weights(tmp_path / "one" / "checkpoints" / "vqa.pt"), _weights(tmp_path / "s2" / "checkpoints" / "vqa.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # throughput and the learning rate reach the logs
    header = (tmp_path / "one" / "csv" / "identify" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"perf/samples_per_s", "perf/tokens_per_s", "train/loss"} <= set(header)
    assert any(h.startswith("lr-AdamW") for h in header)


def test_init_from_checks_keys(synth_vindr_root, tmp_path):
    """A stage checkpoint of another architecture is refused with the keys named."""
    run(_tiny(synth_vindr_root, tmp_path / "s1", "run_stages=[identify]", "stages.identify.max_steps=1"))
    cfg = _tiny(synth_vindr_root, tmp_path / "s2", "run_stages=[vqa]", "model/projector=linear",
                f"stages.vqa.init_from={tmp_path / 's1' / 'checkpoints' / 'identify.pt'}")
    with pytest.raises(KeyError, match="projector"):
        run(cfg)


# ------------------------------------------------------------------ start-up checks
@pytest.mark.parametrize(("override", "message"), [
    ("stages.identify.iters_per_epoch=0", "stages.identify.iters_per_epoch"),
    ("+stages.identify.iter_per_epoch=5", "stages.identify.iter_per_epoch"),
    ("stages.vqa.max_steps=-1", "stages.vqa: set max_steps or max_epochs"),
    ("run_stages=[identify,report]", "run_stages"),
    ("stages.vqa.init_from=/nonexistent/run", "stages.vqa.init_from"),
    ("trainer.use_distributed_sampler=true", "trainer.use_distributed_sampler"),
    ("checkpointing.every_n_train_steps=0", "checkpointing.every_n_train_steps"),
])
def test_wrong_stage_settings_fail_at_start_naming_the_key(override, message, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validate(compose_train([override, f"paths.output_dir={tmp_path}"]))


def test_resume_refuses_a_run_directory_of_other_settings(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "run.json").write_text(json.dumps(run_identity(compose_train([f"paths.output_dir={tmp_path}"]))))
    # a run that failed before training anything is not a run to protect
    check_run_dir(compose_train([f"paths.output_dir={tmp_path}", "model.optim.lr=0.5"]), tmp_path)
    (tmp_path / "checkpoints" / "identify.pt").write_bytes(b"")  # a finished stage
    check_run_dir(compose_train([f"paths.output_dir={tmp_path}", "data.num_workers=4"]), tmp_path)  # speed only
    with pytest.raises(ValueError, match=r"model\.optim\.lr"):
        check_run_dir(compose_train([f"paths.output_dir={tmp_path}", "model.optim.lr=0.5"]), tmp_path)
    check_run_dir(compose_train([f"paths.output_dir={tmp_path}", "model.optim.lr=0.5", "resume=false"]), tmp_path)
