"""VinDr-CXR DataModule: records -> 8-bit images at the encoder's size -> prompt / answer batches.

``root`` is either the raw PhysioNet layout or the output of ``python -m medgrounder.prepare
vindr`` (detected by its ``annotations.jsonl``; PhysioNet or Kaggle source).

- Raw: labels come from :func:`medgrounder.data.vindr.records.load_vindr_physionet` (reader conflicts
  removed, boxes de-duplicated, sizes from the DICOM headers); pixels from
  :func:`medgrounder.data.vindr.dicom.load_dicom_uint8`, decoded once per process.
- Prepared: labels and original sizes from ``annotations.jsonl``, pixels from the cached PNGs
  (``record.image``; resized again only when their size differs from ``image_size``);
  ``record.path`` still names the source DICOM. The windowing and de-duplication settings
  must match the ones the cache was prepared with.

Images are kept in memory as ``uint8 [N, S, S]`` (resized without keeping the aspect ratio, as
LiteGPT does: the 0-100 grid is relative to the original width and height, so it survives the
resize).

The task (``identify`` or ``vqa``) is switched between stages with :meth:`set_task`; the
validation split is a seeded fraction of the training images.

Training batches come from a :class:`~medgrounder.data.sampler.StreamSampler` (one seeded stream,
epochs of ``iters_per_epoch`` batches, sharded over ranks by this module, so the trainer runs with
``use_distributed_sampler=False``); the stream position goes into Lightning checkpoints through
:meth:`VinDrDataModule.state_dict`, which makes a resumed run see exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from medgrounder.core.boxes import to_grid
from medgrounder.core.labels import NO_FINDING
from medgrounder.data.collate import PromptCollator
from medgrounder.data.sampler import StreamSampler
from medgrounder.data.vindr.dicom import load_dicom_uint8
from medgrounder.data.vindr.prepared import is_prepared, read_prepared, resize_square
from medgrounder.data.vindr.records import VinDrRecord, load_vindr_physionet
from medgrounder.tasks import Target
from medgrounder.tasks.identify import identify_answer
from medgrounder.tasks.vqa import vqa_answer

log = logging.getLogger(__name__)
TASKS = ("identify", "grounding", "vqa")


def _load_resized(args: tuple[str, int, str]) -> np.ndarray:
    path, size, windowing = args
    img = load_dicom_uint8(path, windowing=windowing)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def _load_prepared(args: tuple[str, int, str]) -> np.ndarray:
    path, size, _ = args
    with Image.open(path) as im:
        img = np.asarray(im.convert("L"))
    return img if img.shape == (size, size) else resize_square(img, size)


@dataclass
class Sample:
    index: int  # row in the image cache
    record: VinDrRecord
    task: str
    answer: str


class SampleDataset(Dataset):
    def __init__(self, samples: list[Sample], images: torch.Tensor):
        self.samples = samples
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        r = s.record
        return {
            "image": self.images[s.index],
            "task": s.task,
            "answer": s.answer,
            "meta": {
                "id": f"{r.image_id}:{s.task}",
                "image_id": r.image_id,
                "task": s.task,
                "reference": s.answer,
                "image_width": r.width,
                "image_height": r.height,
                "gt_boxes": [[name, *box] for name, box in r.findings],
                "gt_labels": list(r.global_labels),
            },
        }


class VinDrDataModule(L.LightningDataModule):
    def __init__(
        self,
        root: str,
        tokenizer=None,
        task: str = "identify",
        image_size: int = 224,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        seed: int = 0,
        windowing: str = "dicom",
        dedup_iou: float = 0.5,
        dedup_mode: str = "medoid",
        identify_abnormal_only: bool = True,
        decode_workers: int = 2,
        limit_train_images: int | None = None,
        synth: dict | None = None,
    ):
        super().__init__()
        self.root = root
        self.synth = dict(synth) if synth else None
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.windowing = windowing
        self.dedup_iou = dedup_iou
        self.dedup_mode = dedup_mode
        self.identify_abnormal_only = identify_abnormal_only
        self.decode_workers = decode_workers
        self.limit_train_images = limit_train_images
        self.iters_per_epoch: int | None = None
        self._train_sampler: StreamSampler | None = None
        self._resume: dict | None = None
        self.set_task(task)
        self.records: dict[str, list[VinDrRecord]] = {}
        self.images: dict[str, torch.Tensor] = {}
        self.reports: dict[str, dict] = {}

    def set_task(self, task: str, iters_per_epoch: int | None = None) -> None:
        """Switch to a stage's task; its training stream starts at the beginning (a resumed
        stage's position comes back through :meth:`load_state_dict`). ``iters_per_epoch``:
        batches per epoch (None: one pass)."""
        if task not in TASKS:
            raise ValueError(f"VinDr task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.iters_per_epoch = iters_per_epoch
        self._train_sampler = None
        self._resume = None

    # ------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        """With ``synth`` set, write the synthetic dataset at ``root`` unless it is there already
        (into a temporary sibling renamed at the end, so an interrupted run leaves no half dataset)."""
        root = Path(self.root)
        if not self.synth or (root / "annotations" / "annotations_test.csv").exists():
            return
        from medgrounder.core.io import write_complete
        from medgrounder.data.vindr.synth import synth_vindr

        write_complete(root, synth_vindr, **{"workers": self.decode_workers, **self.synth})

    @property
    def prepared(self) -> bool:
        """Whether ``root`` is ``medgrounder.prepare`` output rather than the raw layout."""
        return is_prepared(self.root)

    def setup(self, stage: str | None = None) -> None:
        prepared = self._read_prepared() if self.prepared else None
        for split in ("train", "test"):
            if split in self.records:
                continue
            if prepared is None:
                records, report = load_vindr_physionet(self.root, split, self.dedup_iou, self.dedup_mode)
            else:
                records, report = prepared[split], prepared["report"].get(split, {})
            if split == "train" and self.limit_train_images:
                records = records[: self.limit_train_images]
            self.records[split] = records
            self.reports[split] = report
            self.images[split] = self._decode(records, split, _load_prepared if prepared else _load_resized)
            log.info("VinDr %s: %d images (%d removed for reader conflicts)", split, len(records),
                     report.get("removed_conflicts", 0))

    def _read_prepared(self) -> dict:
        """Records by split (+ the prepare report by split) of a prepared ``root``."""
        settings, report, by_split = read_prepared(self.root)
        mine = {"windowing": self.windowing, "dedup_iou": self.dedup_iou, "dedup_mode": self.dedup_mode}
        clash = {k: (settings[k], v) for k, v in mine.items() if k in settings and settings[k] != v}
        if clash:
            raise ValueError(f"{self.root} was prepared with {clash} (prepared, configured): set the "
                             "data options to match or prepare again")
        return {"train": by_split.get("train", []), "test": by_split.get("test", []),
                "report": report.get("splits", {})}

    def _decode(self, records: list[VinDrRecord], split: str, load=_load_resized) -> torch.Tensor:
        jobs = [(r.image if load is _load_prepared else r.path, self.image_size, self.windowing)
                for r in records]
        desc = f"{'load' if load is _load_prepared else 'decode'} VinDr {split} ({self.image_size}px)"
        if self.decode_workers > 1 and len(jobs) > 64:
            with ProcessPoolExecutor(self.decode_workers) as pool:
                arrays = list(tqdm(pool.map(load, jobs, chunksize=32), total=len(jobs), desc=desc))
        else:
            arrays = [load(j) for j in tqdm(jobs, desc=desc)]
        if not arrays:
            return torch.empty(0, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def _split_train_val(self) -> tuple[list[int], list[int]]:
        n = len(self.records["train"])
        order = np.random.default_rng(self.seed).permutation(n)
        n_val = round(n * self.val_fraction)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    def samples(self, split: str, task: str | None = None) -> list[Sample]:
        """Samples of ``split`` in ``train | val | test`` for ``task`` (default: the current one)."""
        task = task or self.task
        source = "test" if split == "test" else "train"
        records = self.records[source]
        if split == "test":
            indices = list(range(len(records)))
        else:
            train_idx, val_idx = self._split_train_val()
            indices = train_idx if split == "train" else val_idx
        out = []
        for i in indices:
            r = records[i]
            if task in ("identify", "grounding"):
                if self.identify_abnormal_only and split != "test" and not r.findings:
                    continue
                answer = identify_answer((n, to_grid(b, r.width, r.height)) for n, b in r.findings)
            else:
                if not r.global_labels:
                    raise ValueError(f"{r.image_id} has no global labels (the Kaggle layout has "
                                     "none): the vqa task needs the PhysioNet release")
                answer = vqa_answer(g for g in r.global_labels if g != NO_FINDING)
            out.append(Sample(i, r, task, answer))
        return out

    def dataset(self, split: str, task: str | None = None) -> SampleDataset:
        return SampleDataset(self.samples(split, task), self.images["test" if split == "test" else "train"])

    # ------------------------------------------------------------------ loaders
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset, batch_size: int, sampler=None, image_keys: bool = False) -> DataLoader:
        # The loader's own generator draws the worker base seed, so iterating it never consumes
        # the global RNG (a resumed run's RNG stream then matches an uninterrupted one's).
        # image_keys: the train and val loaders, whose images fixed_training_images() holds.
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                          num_workers=self.num_workers, collate_fn=PromptCollator(self.tokenizer, image_keys),
                          generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = self.dataset("train")
        start = 0
        if self._resume:  # restored from a checkpoint before Lightning asks for the loader
            start, self._resume = self._resume_start(world), None
        self._train_sampler = StreamSampler(len(dataset), self.batch_size, self.seed, self.iters_per_epoch,
                                            rank, world, start)
        return self._loader(dataset, self.batch_size, self._train_sampler, image_keys=True)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        dataset = self.dataset("val")
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return self._loader(dataset, self.eval_batch_size, sampler, image_keys=True)

    def test_dataloader(self, task: str | None = None) -> DataLoader:
        # Evaluation shards the test set itself (medgrounder.evaluate.generate_rows).
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

    def fixed_training_images(self) -> torch.Tensor:
        """The training (and validation) images as every epoch shows them (uint8 ``[N, S, S]``;
        no augmentation), for the model's frozen-feature cache."""
        return self.images["train"]

    # ------------------------------------------------------------------ evaluation hooks
    def for_task(self, task: str) -> VinDrDataModule:
        return self

    def targets(self, split: str) -> list[Target]:
        """One target per image of the ``train`` (validation images included) or ``test`` records:
        its findings on the 0-100 grid of the whole image and its global labels (baselines)."""
        return [Target(r.image_id, r.width, r.height, tuple((n, to_grid(b, r.width, r.height)) for n, b in r.findings),
                       tuple(r.global_labels)) for r in self.records[split]]

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """The picture of an image for a figure and the factors that scale its pixel boxes onto it:
        the DICOM at its original size when ``path`` exists, else the prepared cache image
        (resized; boxes scale by its size over the original width and height)."""
        rec = next(r for split in ("test", "train") for r in self.records[split] if r.image_id == image_id)
        if Path(rec.path).is_file() or not getattr(rec, "image", None):
            return load_dicom_uint8(rec.path, windowing=self.windowing), 1.0, 1.0
        with Image.open(rec.image) as im:
            img = np.asarray(im.convert("L"))
        return img, img.shape[1] / rec.width, img.shape[0] / rec.height
