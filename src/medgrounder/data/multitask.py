"""One DataModule per task, switched between stages (PFMVG: captions for stage 1, MS-CXR for
stage 2).

The training loop holds one datamodule and calls ``set_task(stage.task)`` before each stage;
:class:`MultiTaskDataModule` routes that, and every loader call, to the datamodule configured for
the task. Each keeps its own settings (PFMVG trains stage 1 with batch 2 and stage 2 with
batch 4, so the batch size lives with each task's data). The training stream's position in a
checkpoint is the current datamodule's.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

from medgrounder.data.base import BoxedImages, GroundingDataModule


class MultiTaskDataModule(L.LightningDataModule):
    """``tasks``: ``{task: datamodule}``; a datamodule may serve several tasks (it gets
    ``set_task`` too). ``root`` names the data for caches keyed by it (tower pretraining); the
    first datamodule with boxes provides those images."""

    def __init__(self, tasks: Mapping[str, GroundingDataModule], tokenizer=None, root: str | None = None,
                 task: str | None = None, exclude_eval_patients: bool = False):
        if not tasks:
            raise ValueError("MultiTaskDataModule needs at least one task")
        self.modules = dict(tasks)
        super().__init__()
        self.root = root
        self.exclude_eval_patients = exclude_eval_patients
        self.tokenizer = tokenizer
        for dm in self._unique():
            dm.tokenizer = tokenizer
        self.set_task(task or next(iter(self.modules)))

    def _unique(self) -> list[GroundingDataModule]:
        out: list = []
        for dm in self.modules.values():
            if all(dm is not o for o in out):
                out.append(dm)
        return out

    @property
    def trainer(self):
        return self._trainer

    @trainer.setter
    def trainer(self, trainer) -> None:
        """Lightning attaches the trainer here; each datamodule needs it for its rank and position."""
        self._trainer = trainer
        for dm in self._unique():
            dm.trainer = trainer

    @property
    def current(self) -> GroundingDataModule:
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
        """With ``exclude_eval_patients``, the datamodules that evaluate on patients (MS-CXR) are
        set up first and their validation and test patients are left out of the others (stage 1's
        MIMIC-CXR reports), so no stage trains on an image of a patient the last one is scored on."""
        modules = self._unique()
        if self.exclude_eval_patients:
            judged = [dm for dm in modules if hasattr(dm, "eval_patients")]
            for dm in judged:
                dm.setup(stage)
            patients = set().union(*(dm.eval_patients() for dm in judged))
            for dm in modules:
                if hasattr(dm, "exclude_patients") and not hasattr(dm, "eval_patients"):
                    dm.exclude_patients(patients)
        for dm in modules:
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

    def state_dict(self) -> dict:
        return self.current.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.current.load_state_dict(state)

    def for_task(self, task: str) -> GroundingDataModule:
        """The datamodule of ``task`` (evaluation asks it for baselines and pictures)."""
        if task not in self.modules:
            raise ValueError(f"no data configured for task {task!r} (data.tasks has {sorted(self.modules)})")
        return self.modules[task]

    def missing_inputs(self) -> list[str]:
        return [p for dm in self._unique() for p in dm.missing_inputs()]

    def fixed_training_images(self) -> torch.Tensor | None:
        """None: the stages train on different datasets."""
        return None

    def boxed_training_images(self) -> BoxedImages:
        for dm in self._unique():
            boxed = dm.boxed_training_images()
            if boxed is not None:
                return boxed
        raise ValueError(f"none of the data modules of tasks {sorted(self.modules)} has boxes to pretrain towers on")
