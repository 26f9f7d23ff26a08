"""One DataModule per task, switched between stages (PFMVG: captions for stage 1, MS-CXR for
stage 2).

The training loop holds one datamodule and calls ``set_task(stage.task)`` before each stage;
:class:`MultiTaskDataModule` routes that, and every loader call, to the datamodule configured for
the task. Each keeps its own settings (PFMVG trains stage 1 with batch 2 and stage 2 with
batch 4, so the batch size lives with each task's data).
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L


class MultiTaskDataModule(L.LightningDataModule):
    """``tasks``: ``{task: datamodule}``; a datamodule may serve several tasks (it gets
    ``set_task`` too). ``root`` names the data for caches keyed by it (tower pretraining); the
    first task with :meth:`tower_pretraining_data` provides those images."""

    def __init__(self, tasks: Mapping[str, L.LightningDataModule], tokenizer=None, root: str | None = None,
                 task: str | None = None):
        super().__init__()
        if not tasks:
            raise ValueError("MultiTaskDataModule needs at least one task")
        self.modules = dict(tasks)
        self.root = root
        self.tokenizer = tokenizer
        for dm in self._unique():
            dm.tokenizer = tokenizer
        self.set_task(task or next(iter(self.modules)))

    def _unique(self) -> list[L.LightningDataModule]:
        out: list = []
        for dm in self.modules.values():
            if all(dm is not o for o in out):
                out.append(dm)
        return out

    @property
    def current(self) -> L.LightningDataModule:
        return self.modules[self.task]

    def set_task(self, task: str, iters_per_epoch: int | None = None) -> None:
        if task not in self.modules:
            raise ValueError(f"no data configured for task {task!r} (data.tasks has {sorted(self.modules)})")
        self.task = task
        self.modules[task].set_task(task, iters_per_epoch)

    def prepare_data(self) -> None:
        for dm in self._unique():
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for dm in self._unique():
            dm.setup(stage)

    def train_dataloader(self):
        return self.current.train_dataloader()

    def val_dataloader(self):
        return self.current.val_dataloader()

    def test_dataloader(self, task: str | None = None):
        dm = self.modules[task] if task else self.current
        if task:
            dm.set_task(task)
        return dm.test_dataloader(task)

    def for_task(self, task: str) -> L.LightningDataModule:
        """The datamodule of ``task`` (evaluation asks it for baselines and pictures)."""
        return self.modules[task]

    def tower_pretraining_data(self):
        for dm in self._unique():
            if hasattr(dm, "tower_pretraining_data"):
                return dm.tower_pretraining_data()
        raise ValueError(f"none of the data modules of tasks {sorted(self.modules)} provides tower pretraining data")

    def samples(self, split: str, task: str | None = None):
        dm = self.modules[task] if task else self.current
        return dm.samples(split, task)
