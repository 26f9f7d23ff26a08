"""A test-only Lightning callback that kills its own process (SIGKILL: no cleanup, no handler)
when a stage reaches an optimizer step, as a node failure or an OOM killer would."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    def __init__(self, task: str, step: int):
        self.task = task
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.datamodule.task == self.task and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
