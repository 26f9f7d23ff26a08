"""A Lightning training step against a bare PyTorch loop, same tiny model, same batch, same
optimizer, schedule and gradient clipping, measured in this process.

    python bench/bench_train_step.py [--batch 8] [--steps 30] [--rounds 3] [--threads N]

Three loops, interleaved round by round so machine load hits all of them alike:
  bare       forward, backward, clip, AdamW step, schedule step, zero_grad
  lightning  Trainer.fit, no logger or callbacks
  configured Trainer.fit as `medgrounder.train` runs a stage: the configured callbacks (lr monitor,
             throughput), RNG state, resume checkpoints (every_n_train_steps as configured), CSV logger

Prints the median and the lower decile (p10) of each loop's step times (the first steps of every
fit are warm-up and dropped) and the overhead of the Lightning ones over the bare loop (goal: at
most 10 %). Other load on the machine only adds time, so on a shared machine p10 is the steadier
comparison, and `--threads 1` avoids oversubscribing busy cores.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import lightning as L
import torch
from demo_setup import demo_config, demo_model, identify_batch, step_bench_args
from hydra.utils import instantiate

from medgrounder.utils.callbacks import AtomicCheckpointIO, RngState

WARMUP = 3


class StepTimer(L.Callback):
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.starts.append(time.perf_counter())

    def step_times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)][WARMUP:]


def bare(model, batch, steps: int) -> list[float]:
    model.train()
    opt, sched = model.build_optimizer(steps)
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = model(batch["images"], batch["text_ids"], batch["text_mask"], batch["text_labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[WARMUP:]


def lightning(model, batch, steps: int, cfg, configured: bool) -> list[float]:
    timer = StepTimer()
    loader = torch.utils.data.DataLoader([batch] * steps, batch_size=None, collate_fn=lambda b: b)
    kwargs = {"logger": False, "callbacks": [timer]}
    with tempfile.TemporaryDirectory() as tmp:
        if configured:
            from lightning.pytorch.callbacks import ModelCheckpoint
            from lightning.pytorch.loggers import CSVLogger

            kwargs = {"logger": CSVLogger(tmp), "plugins": [AtomicCheckpointIO()], "callbacks": [
                timer, *(instantiate(c) for c in cfg.callbacks.values()), RngState(),
                ModelCheckpoint(dirpath=tmp, save_top_k=0, save_last=True,
                                every_n_train_steps=cfg.checkpointing.every_n_train_steps)]}
        trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, precision="32-true",
                            limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=configured,
                            log_every_n_steps=cfg.trainer.log_every_n_steps, default_root_dir=tmp, **kwargs)
        trainer.fit(model, train_dataloaders=loader)
    return timer.step_times()


def main() -> None:
    args = step_bench_args(__doc__, batch=8, steps=30)
    cfg = demo_config()
    base = demo_model(cfg)
    batch, _ = identify_batch(base, args.batch)
    times: dict[str, list[float]] = {"bare": [], "lightning": [], "configured": []}
    for _ in range(args.rounds):
        times["bare"] += bare(copy.deepcopy(base), batch, args.steps)
        times["lightning"] += lightning(copy.deepcopy(base), batch, args.steps, cfg, configured=False)
        times["configured"] += lightning(copy.deepcopy(base), batch, args.steps, cfg, configured=True)
    print(f"tiny demo model, batch {args.batch}, {args.rounds} x {args.steps} steps, {torch.get_num_threads()} threads")
    for stat, fn in (("median", statistics.median), ("p10", lambda v: statistics.quantiles(v, n=10)[0])):
        ref = fn(times["bare"])
        for name, t in times.items():
            over = "" if name == "bare" else f"   overhead {100 * (fn(t) / ref - 1):+6.1f} %"
            print(f"{stat:<6} {name:<11}: {1000 * fn(t):8.1f} ms/step{over}")


if __name__ == "__main__":
    main()
