"""One DataModule base for every dataset: the task switch, synthetic writing, the loaders, the
rank-sharded resumable training stream, sharded validation and the evaluation hooks, written once.

A dataset subclass supplies only what is its own: its records (``setup``), its ``dataset(split,
task)``, the keys of each training pass (``training_keys``), its ``targets`` and ``pictures``,
what it needs on disk (``missing_data``) and its synthetic writer (``write_synthetic``).

Training batches come from one :class:`~medgrounder.data.sampler.StreamSampler` per stage, sharded
over ranks by this module (so the trainer runs with ``use_distributed_sampler=False``); its
position goes into Lightning checkpoints through :meth:`GroundingDataModule.state_dict`, so a
resumed run sees exactly the batches an uninterrupted one would. Validation is sharded the same
way; the test split is sharded by evaluation itself (:func:`medgrounder.pipeline.generation.generate_rows`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from medgrounder.core.boxes import Box
from medgrounder.core.io import write_complete
from medgrounder.data.collate import PromptCollator
from medgrounder.data.sampler import StreamSampler
from medgrounder.data.views import CropSettings
from medgrounder.tasks import Target, get_task

__all__ = ["BoxedImage", "BoxedImages", "GroundingDataModule", "crop_settings", "decode_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxedImage:
    """One training image's findings in original pixels."""

    width: int
    height: int
    findings: tuple[tuple[str, Box], ...]


@dataclass(frozen=True)
class BoxedImages:
    """Training images at the model's size (uint8 ``[N, S, S]``, whole views) and their findings
    over ``classes``: the dense supervision of tower pretraining."""

    images: torch.Tensor
    records: list[BoxedImage]
    classes: tuple[str, ...]


def crop_settings(crop: dict | None) -> CropSettings | None:
    """A config's ``crop`` mapping (lists for the ranges) -> :class:`CropSettings`; None: whole images."""
    return CropSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(crop).items()}) if crop else None


def decode_all(load: Callable, jobs: list, workers: int, desc: str, chunksize: int = 16) -> list[np.ndarray]:
    """``[load(job) for job in jobs]``, in a pool of ``workers`` processes when there are many."""
    if workers > 1 and len(jobs) > 64:
        with ProcessPoolExecutor(workers) as pool:
            return list(tqdm(pool.map(load, jobs, chunksize=chunksize), total=len(jobs), desc=desc))
    return [load(j) for j in tqdm(jobs, desc=desc)]


class GroundingDataModule(L.LightningDataModule):
    """``tasks``: the tasks this dataset serves; ``title``: its name in messages.
    ``epoch_is_pass``: without ``iters_per_epoch`` an epoch is one pass over the training keys,
    the incomplete last batch dropped (else the training stream runs on across passes, epochs of
    ``n // global batch`` batches: VinDr)."""

    tasks: ClassVar[tuple[str, ...]]
    title: ClassVar[str]
    epoch_is_pass: ClassVar[bool] = True

    def __init__(self, root: str | None, tokenizer=None, *, batch_size: int, eval_batch_size: int,
                 num_workers: int = 0, seed: int = 0, synth: dict | None = None, task: str):
        super().__init__()
        self.root = root
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.synth = dict(synth) if synth else None
        self._train_sampler: StreamSampler | None = None
        self._resume: dict | None = None
        self.set_task(task)

    # ------------------------------------------------------------------ what a dataset supplies
    def dataset(self, split: str, task: str | None = None) -> Dataset:
        """Items of ``split`` (``train | val | test``) for ``task`` (default: the current one);
        the training dataset takes the keys of :meth:`training_keys`, the others indices."""
        raise NotImplementedError

    def training_keys(self, k: int) -> Sequence[Hashable]:
        """The keys of training pass ``k`` (a pure function of ``k``)."""
        raise NotImplementedError

    def targets(self, split: str) -> list[Target]:
        """The labels of ``split`` for the tasks' baselines (findings on the 0-100 grid of the
        whole image)."""
        raise NotImplementedError

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """An image for figures (uint8 ``[H, W]``) and the factors from original pixels onto it."""
        raise NotImplementedError

    def missing_data(self) -> list[str]:
        """What the configured inputs lack, each naming where it was looked for and where to get
        it; empty when everything is there."""
        raise NotImplementedError

    def write_synthetic(self, folder: Path) -> None:
        """Write the synthetic dataset of ``synth`` into ``folder``."""
        raise NotImplementedError

    def fixed_training_images(self) -> torch.Tensor | None:
        """The training (and validation) images as every epoch shows them (uint8 ``[N, S, S]``),
        for the model's frozen-feature cache; None when training views are random crops."""
        return None

    def boxed_training_images(self) -> BoxedImages | None:
        """The training images with their pixel boxes (tower pretraining); None without boxes."""
        return None

    def sample_counts(self) -> dict[str, int]:
        """Samples per split, reported beside the metrics (``num_samples/<split>``); ``{}`` when
        the dataset does not report them."""
        return {}

    # ------------------------------------------------------------------ tasks and inputs
    def set_task(self, task: str, iters_per_epoch: int | None = None) -> None:
        """Switch to a stage's task; its training stream starts at the beginning (a resumed
        stage's position comes back through :meth:`load_state_dict`). ``iters_per_epoch``:
        batches per epoch (None: one pass)."""
        get_task(task)
        if task not in self.tasks:
            raise ValueError(f"{self.title} serves the task(s) {self.tasks}, got {task!r}")
        if iters_per_epoch is not None and iters_per_epoch <= 0:
            raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
        self.task = task
        self.iters_per_epoch = iters_per_epoch
        self._train_sampler = None
        self._resume = None

    def for_task(self, task: str) -> GroundingDataModule:
        """The datamodule serving ``task``: this one."""
        if task not in self.tasks:
            raise ValueError(f"{self.title} serves the task(s) {self.tasks}, not {task!r}")
        return self

    def missing_inputs(self) -> list[str]:
        """What a run would miss (nothing when ``synth`` writes the data on first use)."""
        return [] if self.synth else self.missing_data()

    def prepare_data(self) -> None:
        """With ``synth`` set, write the synthetic dataset at ``root`` unless it is there already
        (into a temporary sibling renamed at the end, so an interrupted run leaves no half dataset and
        ``root`` existing means it is complete)."""
        if not self.synth or self.root is None or Path(self.root).exists():
            return
        write_complete(self.root, self.write_synthetic)

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, image_keys: bool = False) -> DataLoader:
        # The loader's own generator draws the worker base seed, so iterating it never consumes
        # the global RNG (a resumed run's RNG stream then matches an uninterrupted one's).
        # image_keys: the train and val loaders, whose images fixed_training_images() holds.
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                          num_workers=self.num_workers, collate_fn=PromptCollator(self.tokenizer, image_keys),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        start = 0
        if self._resume:  # restored from a checkpoint before Lightning asks for the loader
            start, self._resume = self._resume_start(world), None
        self._train_sampler = StreamSampler(self.training_keys, self.batch_size, self.iters_per_epoch,
                                            self.epoch_is_pass and self.iters_per_epoch is None, rank, world, start)
        return self._loader(self.dataset("train"), self.batch_size, self._train_sampler,
                            image_keys=self.fixed_training_images() is not None)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = self.dataset("val")
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return self._loader(dataset, self.eval_batch_size, sampler, image_keys=self.fixed_training_images() is not None)

    def test_dataloader(self, task: str | None = None) -> DataLoader:
        return self._loader(self.dataset("test", task), self.eval_batch_size)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The training stream's position, in samples: the batches training has taken (Lightning's
        progress counter, not the sampler, which the loader runs ahead of) since the start of
        the epoch being iterated."""
        sampler, trainer = self._train_sampler, getattr(self, "trainer", None)
        if sampler is None or trainer is None:
            return {}
        taken = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        return {"task": self.task, "samples": (sampler.epoch_begin + taken) * sampler.global_batch,
                "global_batch": sampler.global_batch, "epoch_batches": sampler.epoch_batches}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("task") != self.task:
            raise ValueError(f"the checkpoint's data position is for task {state.get('task')!r}, "
                             f"this stage trains {self.task!r}")
        self._resume = dict(state) if state else None

    def _resume_start(self, world: int) -> int:
        state = self._resume
        global_batch = self.batch_size * world
        if state["global_batch"] != global_batch:
            log.warning("resuming with a global batch of %d instead of %d (data.batch_size x processes): "
                        "the data position is approximate", global_batch, state["global_batch"])
        return state["samples"] // global_batch
