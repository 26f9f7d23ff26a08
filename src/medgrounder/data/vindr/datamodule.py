"""VinDr-CXR DataModule: records -> 8-bit images at the encoder's size -> prompt / answer batches.

``root`` is either the raw PhysioNet layout or the output of ``python -m medgrounder.prepare
vindr`` (detected by its ``annotations.jsonl``; PhysioNet or Kaggle source).

- Raw: labels come from :func:`medgrounder.data.vindr.records.load_vindr_physionet` (reader conflicts
  removed, boxes fused by ``label_fusion``, sizes from the DICOM headers); pixels from
  :func:`medgrounder.data.vindr.dicom.load_dicom_uint8`, decoded once per process.
- Prepared: labels and original sizes from ``annotations.jsonl``, pixels from the cached PNGs
  (``record.image``; resized again only when their size differs from ``image_size``);
  ``record.path`` still names the source DICOM. The windowing and label-fusion settings
  (``label_fusion`` and its method's keys) must match the ones the cache was prepared with.

Images are kept in memory as ``uint8 [N, S, S]`` (resized without keeping the aspect ratio, as
LiteGPT does: the 0-100 grid is relative to the original width and height, so it survives the
resize).

The task (``identify`` or ``vqa``) is switched between stages with :meth:`set_task`; the
validation split is a seeded fraction of the training images.

Training runs one continuous stream of seeded permutations of the training samples (epochs of
``iters_per_epoch`` batches, or ``n // global batch``, continuing the stream), sharded and resumed
by :class:`~medgrounder.data.base.GroundingDataModule`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from medgrounder.core.boxes import to_grid
from medgrounder.core.labels import LOCAL_LABELS, NO_FINDING
from medgrounder.data.base import BoxedImage, BoxedImages, GroundingDataModule, decode_all
from medgrounder.data.sampler import shuffled
from medgrounder.data.vindr.dicom import load_dicom_uint8
from medgrounder.data.vindr.layout import PHYSIONET_FILES
from medgrounder.data.vindr.prepared import is_prepared, log_fusion, read_prepared, resize_square
from medgrounder.data.vindr.records import (
    VinDrRecord,
    fusion_settings,
    label_settings,
    load_vindr_physionet,
)
from medgrounder.tasks import Target, get_task

log = logging.getLogger(__name__)
SOURCE = ("VinDr-CXR 1.0.0 from https://physionet.org/content/vindr-cxr/1.0.0/ (credentialed access); set "
          "paths.vindr_root=DIR or VINDR_ROOT")


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

    def prompt_of(self, i: int) -> tuple[str, str | None]:
        """Item ``i``'s ``(task, instruction)`` without its image (None: the task's own)."""
        return self.samples[i].task, None

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


class VinDrDataModule(GroundingDataModule):
    tasks = ("identify", "grounding", "vqa")
    title = "VinDr"
    epoch_is_pass = False

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
        label_fusion: str = "dedup",
        fusion_iou: float = 0.5,
        fusion_conf_type: str = "avg",
        min_votes: int | None = None,
        identify_abnormal_only: bool = True,
        decode_workers: int = 2,
        limit_train_images: int | None = None,
        synth: dict | None = None,
    ):
        if not 0 <= val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in [0, 1) (0: no validation split), got {val_fraction!r}")
        super().__init__(root, tokenizer, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, seed=seed, synth=synth, task=task)
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.windowing = windowing
        self.dedup_iou = dedup_iou
        self.dedup_mode = dedup_mode
        self.fusion = fusion_settings(label_fusion, dedup_iou, dedup_mode, fusion_iou, fusion_conf_type, min_votes)
        self.identify_abnormal_only = identify_abnormal_only
        self.decode_workers = decode_workers
        self.limit_train_images = limit_train_images
        self.records: dict[str, list[VinDrRecord]] = {}
        self.images: dict[str, torch.Tensor] = {}
        self.reports: dict[str, dict] = {}

    # ------------------------------------------------------------------ inputs
    def missing_data(self) -> list[str]:
        root = Path(self.root)
        if is_prepared(root):  # `python -m medgrounder.prepare vindr` output replaces the raw layout
            return []
        missing = [f for f in PHYSIONET_FILES if not (root / f).exists()]
        if not missing:
            return []
        return [f"data.root={root.resolve()} lacks {', '.join(missing)} (or the annotations.jsonl of "
                f"`python -m medgrounder.prepare vindr`). Get {SOURCE}."]

    def write_synthetic(self, folder: Path) -> None:
        from medgrounder.data.vindr.synth import synth_vindr

        synth_vindr(folder, **{"workers": self.decode_workers, **self.synth})

    # ------------------------------------------------------------------ loading
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
                records, report = load_vindr_physionet(self.root, split, **self.fusion)
            else:
                records, report = prepared[split], prepared["report"].get(split, {})
            if split == "train" and self.limit_train_images:
                records = records[: self.limit_train_images]
            self.records[split] = records
            self.reports[split] = report
            self.images[split] = self._decode(records, split, _load_prepared if prepared else _load_resized)
            log.info("VinDr %s: %d images (%d removed for reader conflicts)", split, len(records),
                     report.get("removed_conflicts", 0))
            log_fusion(report)

    def _read_prepared(self) -> dict:
        """Records by split (+ the prepare report by split) of a prepared ``root``."""
        settings, report, by_split = read_prepared(self.root)
        settings = {**settings, **label_settings(settings)}  # a cache from before label_fusion: dedup
        mine = {"windowing": self.windowing, **label_settings(self.fusion)}
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
        arrays = decode_all(load, jobs, self.decode_workers, desc, chunksize=32)
        if not arrays:
            return torch.empty(0, self.image_size, self.image_size, dtype=torch.uint8)
        return torch.from_numpy(np.stack(arrays))

    def _split_train_val(self) -> tuple[list[int], list[int]]:
        n = len(self.records["train"])
        order = np.random.default_rng(self.seed).permutation(n)
        n_val = round(n * self.val_fraction)
        return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())

    def _indices(self, split: str) -> list[int]:
        """Rows of ``split``'s records (``val`` is a seeded fraction of the training file)."""
        if split == "test":
            return list(range(len(self.records["test"])))
        train_idx, val_idx = self._split_train_val()
        return train_idx if split == "train" else val_idx

    def samples(self, split: str, task: str | None = None) -> list[Sample]:
        """Samples of ``split`` in ``train | val | test`` for ``task`` (default: the current one)."""
        task = task or self.task
        spec = get_task(task)
        records = self.records["test" if split == "test" else "train"]
        out = []
        for i in self._indices(split):
            r = records[i]
            # LiteGPT's stage 1 trains on the images with findings
            if spec.localizes and self.identify_abnormal_only and split != "test" and not r.findings:
                continue
            if spec.needs_labels and not r.global_labels:
                raise ValueError(f"{r.image_id} has no global labels (the Kaggle layout has none): "
                                 f"the {task} task needs the PhysioNet release")
            out.append(Sample(i, r, task, spec.answer(self._target(r))))
        return out

    @staticmethod
    def _target(r: VinDrRecord) -> Target:
        """A record's findings on the 0-100 grid of the whole image and its global labels: the
        diagnoses, and "No finding" exactly when the label csv's column says so (LiteGPT's binary
        truth is that column: an image with local findings and no diagnosis has neither)."""
        labels = tuple(r.global_labels)
        if r.no_finding is not None:
            labels = (*(g for g in labels if g != NO_FINDING), *((NO_FINDING,) if r.no_finding else ()))
        return Target(r.image_id, r.width, r.height, tuple((n, to_grid(b, r.width, r.height)) for n, b in r.findings),
                      labels)

    def dataset(self, split: str, task: str | None = None) -> SampleDataset:
        return SampleDataset(self.samples(split, task), self.images["test" if split == "test" else "train"])

    def training_keys(self, k: int) -> list[int]:
        return shuffled(len(self.samples("train")), self.seed)(k)

    # ------------------------------------------------------------------ what other parts read
    def fixed_training_images(self) -> torch.Tensor:
        return self.images["train"]

    def boxed_training_images(self) -> BoxedImages:
        """The ``[identify]`` training images (those with findings, as LiteGPT's stage 1)."""
        samples = self.samples("train", "identify")
        images = self.images["train"][torch.tensor([s.index for s in samples])]
        records = [BoxedImage(s.record.width, s.record.height, tuple(s.record.findings)) for s in samples]
        return BoxedImages(images, records, LOCAL_LABELS)

    def targets(self, split: str) -> list[Target]:
        """One per image: its findings and global labels. ``train`` is the whole training file
        (the validation images included, as the mean-box baseline has always counted them)."""
        records = self.records["test" if split == "test" else "train"]
        chosen = range(len(records)) if split in ("train", "test") else self._indices(split)
        return [self._target(records[i]) for i in chosen]

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """The DICOM at its original size when ``record.path`` exists, else the prepared cache
        image ``record.image`` (boxes scale by its size over the original ``width`` / ``height``)."""
        rec = next(r for split in ("test", "train") for r in self.records[split] if r.image_id == image_id)
        if Path(rec.path).is_file() or not rec.image:
            return load_dicom_uint8(rec.path, windowing=self.windowing), 1.0, 1.0
        with Image.open(rec.image) as im:
            img = np.asarray(im.convert("L"))
        return img, img.shape[1] / rec.width, img.shape[0] / rec.height
