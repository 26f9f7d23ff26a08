"""Test-only Lightning callbacks, configured like any other (``+callbacks.NAME._target_=probes.X``)
in subprocess runs of the real entry point."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL its own process (no cleanup, no handler: as a node failure or the OOM killer) when
    the stage of ``task`` reaches optimizer step ``step``."""

    def __init__(self, task: str, step: int):
        self.task = task
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.datamodule.task == self.task and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBatches(Callback):
    """Append ``{rank, world, task, step, ids}`` for every training batch to ``<dir>/batches_rank<R>.jsonl``."""

    def __init__(self, dir: str):
        self.dir = Path(dir)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        row = {"rank": trainer.global_rank, "world": trainer.world_size, "task": trainer.datamodule.task,
               "step": trainer.global_step, "ids": [m["id"] for m in batch["meta"]]}
        with open(self.dir / f"batches_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
