"""MS-CXR's local alignment csv (:mod:`medgrounder.data.mscxr.layout`) -> samples and splits.

One csv row is one box (``x, y, w, h`` in original pixels); rows sharing an image and a phrase are
one :class:`MSCXRSample` with several boxes. The patient is the ``pXXXXXXXX`` folder of ``path``.

Splits: :func:`split_by_patient` (PFMVG section 3.1: patients shuffled with ``seed`` and split
7:1:2, so no patient is in two splits) or :func:`official_split` (the csv's ``split`` column).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgrounder.core.boxes import Box
from medgrounder.data.mscxr.layout import REQUIRED_COLUMNS, patient_of

SPLITS = ("train", "val", "test")
OFFICIAL_SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validate": "val",
                        "validation": "val", "test": "test"}


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
