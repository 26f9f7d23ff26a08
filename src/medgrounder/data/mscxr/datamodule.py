"""MS-CXR phrase grounding (PFMVG stage 2): the local alignment csv -> ``[refer]`` samples.

Layout (design section 5)::

    <root>/MS_CXR_Local_Alignment_v1.1.0.csv   dicom_id, category_name, label_text, x, y, w, h,
                                              image_width, image_height, path, split
    <image_root>/files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg   (MIMIC-CXR-JPG)

One csv row is one box (``x, y, w, h`` in original pixels); rows sharing an image and a phrase are
one sample with several boxes. The patient is the ``pXXXXXXXX`` folder of ``path``.

Splits: ``random`` (PFMVG section 3.1: patients shuffled with ``seed`` and split 7:1:2, so no
patient is in two splits) or ``official`` (the csv's ``split`` column).

Training views are random crops (:mod:`medgrounder.data.views`; PFMVG trains on random 448
crops): boxes move with the image, a box cut by the crop is clipped, a box cropped away is
dropped, and a crop that leaves the phrase without a box is drawn again (after ``max_tries`` the
whole image is used). Validation and test view the whole image, so a predicted 0-100 grid box
maps back to original pixels with :func:`~medgrounder.core.boxes.from_grid` (what the metrics
do); rows also carry ``view`` for :func:`~medgrounder.data.views.view_grid_to_pixels`.

Images are decoded once into a square ``uint8 [N, C, C]`` cache (``cache_size``, default the
model's size; larger keeps crops sharp), aspect ratio not kept: boxes are relative to the original
width and height, so they survive the resize.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medgrounder.core.boxes import Box
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.data.base import (
    BoxedImage,
    BoxedImages,
    GroundingDataModule,
    crop_settings,
    decode_all,
)
from medgrounder.data.sampler import shuffled_with_pass
from medgrounder.data.views import (
    CropSettings,
    View,
    boxes_into_view,
    item_rng,
    load_square_gray,
    render_view,
    sample_crop,
    to_tensor,
    view_grid,
)
from medgrounder.tasks import Target, get_task

log = logging.getLogger(__name__)
REFER = get_task("refer")

MSCXR_CSV = "MS_CXR_Local_Alignment_v1.1.0.csv"
REQUIRED_COLUMNS = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width",
                    "image_height", "path")
SPLITS = ("train", "val", "test")
OFFICIAL_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val",
                        "validation": "val", "test": "test"}
_PATIENT_RE = re.compile(r"(?:^|/)p\d{2}/p(\d+)/s(\d+)/[^/]+$")


@dataclass
class MSCXRSample:
    """One image and phrase: every box the phrase grounds, in original pixels."""

    sample_id: str  # "<dicom_id>:<k>", k counting the image's phrases in csv order
    dicom_id: str
    subject_id: str
    study_id: str
    path: str  # relative to the image root (MIMIC-CXR-JPG)
    category: str
    label_text: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)
    official_split: str | None = None
    lines: list[int] = field(default_factory=list)  # csv line numbers (for error messages)


def patient_of(path: str) -> tuple[str, str]:
    """``files/p10/p10000032/s50414267/x.jpg`` -> ``("10000032", "50414267")`` (subject, study)."""
    m = _PATIENT_RE.search(path.replace("\\", "/"))
    if not m:
        raise ValueError(f"path {path!r} is not a MIMIC-CXR-JPG path files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg")
    return m.group(1), m.group(2)


def _number(row: dict, key: str, where: str, cast=float) -> float:
    raw = row.get(key)
    try:
        return cast(float(raw)) if cast is int else cast(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column {key!r} must be a number, got {raw!r}") from None


def load_mscxr_csv(path: str | Path) -> list[MSCXRSample]:
    """Read the MS-CXR csv into samples (rows grouped by image and phrase, in csv order).

    Boxes are clipped to the image. Errors name the file, the line and the column: a missing
    column, a non-numeric or non-positive size, an empty phrase or category, a path without a
    patient, a box outside the image, or rows of one sample that disagree on category, size,
    path or split."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MS-CXR csv {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
        groups: dict[tuple[str, str], MSCXRSample] = {}
        per_image: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            dicom = (row["dicom_id"] or "").strip()
            text = " ".join((row["label_text"] or "").split())
            category = (row["category_name"] or "").strip()
            for key, value in (("dicom_id", dicom), ("label_text", text), ("category_name", category)):
                if not value:
                    raise ValueError(f"{where}: empty {key!r}")
            x, y, w, h = (_number(row, k, where) for k in ("x", "y", "w", "h"))
            width, height = (_number(row, k, where, int) for k in ("image_width", "image_height"))
            if w <= 0 or h <= 0 or width <= 0 or height <= 0:
                raise ValueError(f"{where}: box size {w} x {h} and image size {width} x {height} must be positive")
            box = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"{where}: box x={x}, y={y}, w={w}, h={h} lies outside the {width} x {height} image")
            rel = (row["path"] or "").strip()
            try:
                subject, study = patient_of(rel)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            split = (row.get("split") or "").strip() or None
            key = (dicom, text)
            sample = groups.get(key)
            if sample is None:
                k = per_image.get(dicom, 0)
                per_image[dicom] = k + 1
                sample = groups[key] = MSCXRSample(f"{dicom}:{k}", dicom, subject, study, rel, category, text,
                                                   width, height, official_split=split)
            else:
                mine = (sample.category, sample.width, sample.height, sample.path, sample.official_split)
                theirs = (category, width, height, rel, split)
                if mine != theirs:
                    raise ValueError(f"{where}: rows of image {dicom} and phrase {text!r} disagree on "
                                     f"(category, width, height, path, split): {theirs} here, {mine} on line "
                                     f"{sample.lines[0]}")
            sample.boxes.append(box)
            sample.lines.append(line)
    for sample in groups.values():
        sample.boxes.sort()
    return list(groups.values())


def split_by_patient(samples: Sequence[MSCXRSample], ratios: Sequence[float] = (7, 1, 2),
                     seed: int = 0) -> dict[str, list[MSCXRSample]]:
    """PFMVG's random split: the patients (sorted, then shuffled with ``seed``) are cut
    ``ratios`` (train : val : test) by patient count, so no patient is in two splits. Samples
    keep their csv order within a split."""
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(f"split ratios must be three non-negative numbers (train, val, test), got {list(ratios)}")
    patients = sorted({s.subject_id for s in samples})
    order = np.random.default_rng(seed).permutation(len(patients))
    total = float(sum(ratios))
    n_train = round(len(patients) * ratios[0] / total)
    n_val = round(len(patients) * ratios[1] / total)
    which = {}
    for rank, i in enumerate(order):
        which[patients[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return {split: [s for s in samples if which[s.subject_id] == split] for split in SPLITS}


def official_split(samples: Sequence[MSCXRSample]) -> dict[str, list[MSCXRSample]]:
    """The csv's ``split`` column (train / val / test; ``validate``, ``valid`` and ``validation``
    read as val)."""
    out: dict[str, list[MSCXRSample]] = {s: [] for s in SPLITS}
    for s in samples:
        name = OFFICIAL_SPLIT_NAMES.get((s.official_split or "").lower())
        if name is None:
            raise ValueError(f"sample {s.sample_id} (csv line {s.lines[0]}): split {s.official_split!r} is not one of "
                             f"{sorted(OFFICIAL_SPLIT_NAMES)}; use split=random for PFMVG's 7:1:2 patient split")
        out[name].append(s)
    return out


class ReferDataset(Dataset):
    """``[refer]`` items of one split.

    ``train=True``: keys are ``(index, pass)`` of the training stream; each item gets a random
    crop and a random instruction of the pool, drawn from ``(seed, pass, index)``. Otherwise keys
    are indices, the view is the whole image and the instruction the pool's first.
    """

    def __init__(self, samples: list[MSCXRSample], image_index: dict[str, int], cache: np.ndarray,
                 image_size: int, train: bool, crop: CropSettings | None, seed: int):
        self.samples = samples
        self.image_index = image_index
        self.cache = cache
        self.image_size = image_size
        self.train = train
        self.crop = crop
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def view_and_boxes(self, s: MSCXRSample, rng: np.random.Generator | None) -> tuple[View, list[Box]]:
        """The view of ``s`` and its boxes in view pixels (cropped-away boxes dropped; re-cropped
        while none is left)."""
        full = View.full(s.width, s.height)
        if rng is not None and self.crop is not None:
            for _ in range(self.crop.max_tries):
                view = sample_crop(rng, s.width, s.height, self.crop)
                kept = [b for b in boxes_into_view(s.boxes, view, self.crop.min_visible) if b is not None]
                if kept:
                    return view, kept
        return full, [b for b in boxes_into_view(s.boxes, full) if b is not None]

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        s = self.samples[index]
        rng = item_rng(self.seed, epoch, index) if self.train and epoch is not None else None
        view, boxes = self.view_and_boxes(s, rng)
        instruction = REFER.instruction(Target(text=s.label_text), rng)
        answer = REFER.answer(Target(findings=tuple(("", view_grid(b, view)) for b in boxes)))
        image = render_view(self.cache[self.image_index[s.dicom_id]], s.width, s.height, view, self.image_size)
        return {
            "image": to_tensor(image),
            "task": "refer",
            "instruction": instruction,
            "answer": answer,
            "meta": {
                "id": s.sample_id,
                "image_id": s.dicom_id,
                "task": "refer",
                "prompt": REFER.prompt(instruction),
                "reference": answer,
                "label_text": s.label_text,
                "category": s.category,
                "image_width": s.width,
                "image_height": s.height,
                "gt_boxes": [list(b) for b in s.boxes],
                "view": [view.x1, view.y1, view.x2, view.y2],
            },
        }


def _decode(job: tuple[str, int]) -> np.ndarray:
    return load_square_gray(*job)


SOURCE = ("MS-CXR from https://physionet.org/content/ms-cxr/ with the MIMIC-CXR-JPG images "
          "(https://physionet.org/content/mimic-cxr-jpg/, credentialed access); set paths.mscxr_root / MSCXR_ROOT "
          "(the csv) and paths.mimic_cxr_jpg_root / MIMIC_CXR_JPG_ROOT (the folder holding files/)")


class MSCXRDataModule(GroundingDataModule):
    """MS-CXR ``[refer]`` batches (see the module docstring).

    ``root``: the folder of the csv; ``image_root``: MIMIC-CXR-JPG's root (holding ``files/``),
    default ``root``; ``split``: ``random`` (``split_ratios``, ``seed``) or ``official``;
    ``crop``: :class:`CropSettings` fields for training views, ``null`` for whole images;
    ``synth``: :func:`medgrounder.synth.synth_mscxr` arguments, to write a synthetic set at
    ``root`` on first use.
    """

    tasks = ("refer",)
    title = "MS-CXR"

    def __init__(
        self,
        root: str,
        tokenizer=None,
        csv_name: str = MSCXR_CSV,
        image_root: str | None = None,
        image_size: int = 448,
        cache_size: int | None = None,
        split: str = "random",
        split_ratios: Sequence[float] = (7, 1, 2),
        seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        crop: dict | None = None,
        decode_workers: int = 2,
        synth: dict | None = None,
        task: str = "refer",
    ):
        if split not in ("random", "official"):
            raise ValueError(f"MS-CXR split must be 'random' or 'official', got {split!r}")
        super().__init__(root, tokenizer, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, seed=seed, synth=synth, task=task)
        self.csv_name = csv_name
        self.image_root = image_root or root
        self.image_size = image_size
        self.cache_size = cache_size or image_size
        self.split = split
        self.split_ratios = tuple(split_ratios)
        self.crop = crop_settings(crop)
        self.decode_workers = decode_workers
        self.splits: dict[str, list[MSCXRSample]] = {}
        self.image_index: dict[str, int] = {}
        self.cache: np.ndarray | None = None

    @property
    def csv_path(self) -> Path:
        return Path(self.root) / self.csv_name

    def missing_data(self) -> list[str]:
        problems = []
        if not self.csv_path.is_file():
            problems.append(f"data.root={Path(self.root).resolve()} lacks {self.csv_name}. Get {SOURCE}.")
        files = Path(self.image_root) / "files"
        if not files.is_dir():
            problems.append(f"MS-CXR images: {files.resolve()} does not exist. Get {SOURCE}.")
        return problems

    def write_synthetic(self, folder: Path) -> None:
        from medgrounder.synth import synth_mscxr

        synth_mscxr(folder, **self.synth)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        samples = load_mscxr_csv(self.csv_path)
        self.splits = official_split(samples) if self.split == "official" else split_by_patient(
            samples, self.split_ratios, self.seed)
        paths = {}
        for s in samples:
            paths.setdefault(s.dicom_id, s.path)
        missing = [p for p in paths.values() if not (Path(self.image_root) / p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} MS-CXR images are missing under image_root="
                                    f"{Path(self.image_root).resolve()}, e.g. {missing[:3]}: set data.image_root to "
                                    "the MIMIC-CXR-JPG folder that holds files/")
        self.image_index = {d: i for i, d in enumerate(paths)}
        jobs = [(str(Path(self.image_root) / p), self.cache_size) for p in paths.values()]
        arrays = decode_all(_decode, jobs, self.decode_workers, f"decode MS-CXR ({self.cache_size}px)")
        self.cache = np.stack(arrays) if arrays else np.zeros((0, self.cache_size, self.cache_size), np.uint8)
        log.info("MS-CXR: %s samples (train / val / test), %d images, split %s",
                 "/".join(str(len(self.splits[k])) for k in SPLITS), len(paths), self.split)

    # ------------------------------------------------------------------ datasets and loaders
    def samples(self, split: str, task: str | None = None) -> list[MSCXRSample]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.splits[split]

    def dataset(self, split: str, task: str | None = None) -> ReferDataset:
        train = split == "train"
        return ReferDataset(self.samples(split), self.image_index, self.cache, self.image_size, train,
                            self.crop if train else None, self.seed)

    def training_keys(self, k: int) -> list[tuple[int, int]]:
        return shuffled_with_pass(len(self.splits["train"]), self.seed)(k)

    # ------------------------------------------------------------------ what other parts read
    def targets(self, split: str) -> list[Target]:
        """One per phrase sample: every box as ``(category, 0-100 grid box of the whole image)``,
        the phrase as ``text``."""
        return [Target(s.dicom_id, s.width, s.height,
                       tuple((s.category, view_grid(b, View.full(s.width, s.height))) for b in s.boxes),
                       text=s.label_text) for s in self.samples(split)]

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """The cached picture of an image and the factors from original pixels onto it."""
        sample = next(s for split in SPLITS for s in self.splits[split] if s.dicom_id == image_id)
        c = self.cache.shape[1]
        return self.cache[self.image_index[image_id]], c / sample.width, c / sample.height

    def boxed_training_images(self) -> BoxedImages:
        """The training images (whole views), every box of their phrases as ``(category, pixel
        box)``; the classes are MS-CXR's categories (and any other the csv names)."""
        by_image: dict[str, tuple[int, int, list]] = {}
        for s in self.splits["train"]:
            by_image.setdefault(s.dicom_id, (s.width, s.height, []))[2].extend((s.category, b) for b in s.boxes)
        images = [render_view(self.cache[self.image_index[d]], w, h, View.full(w, h), self.image_size)
                  for d, (w, h, _) in by_image.items()]
        stacked = torch.from_numpy(np.stack(images)) if images else torch.empty(0, self.image_size, self.image_size,
                                                                                 dtype=torch.uint8)
        records = [BoxedImage(w, h, tuple(f)) for w, h, f in by_image.values()]
        extra = sorted({c for r in records for c, _ in r.findings} - set(MSCXR_CATEGORIES))
        return BoxedImages(stacked, records, (*MSCXR_CATEGORIES, *extra))
