"""A synthetic VinDr-CXR in the layout of :mod:`medgrounder.data.vindr.layout`: PhysioNet
1.0.0 (real DICOM files and the four csv files under ``annotations/``) or Kaggle VinBigData
(``train.csv`` with findings drawn from its 14 classes, no global labels, the test images
unlabelled as on Kaggle).

Each local finding is drawn with its class pattern (:data:`~medgrounder.data.synthetic.APPEARANCE`);
global labels follow from the findings by :func:`global_labels_from_local`. The DICOM files vary
what real ones vary (bit depth, MONOCHROME1, zero to two windows, rescale tags), and the readers
disagree as VinDr's do (jittered boxes, a reader saying "No finding", a box drawn twice). The same
seed gives byte-identical files, whatever ``workers``.
"""

from __future__ import annotations

import csv
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medgrounder.core.boxes import Box, iou
from medgrounder.core.labels import (
    GLOBAL_INDEX,
    GLOBAL_LABELS,
    KAGGLE_CLASS_ID,
    KAGGLE_CLASSES,
    KAGGLE_NO_FINDING_ID,
    LOCAL_INDEX,
    LOCAL_LABELS,
    NO_FINDING,
)
from medgrounder.data.synthetic import pick, place_box, render_chest, round_box, run_jobs
from medgrounder.data.vindr.layout import (
    ANNOTATION_COLUMNS,
    GLOBAL_COLUMNS,
    KAGGLE_COLUMNS,
    KAGGLE_CSV,
    LAYOUTS,
    SPLITS,
    annotations_csv,
    dicom_path,
    image_labels_csv,
)

#: Test-set supports of the 22 local labels (LiteGPT table 8), used as class weights.
LOCAL_WEIGHTS: tuple[int, ...] = (
    220, 86, 194, 309, 2, 96, 1, 3, 8, 221, 58, 84, 9, 2, 20, 176, 111, 169, 18, 217, 11, 94,
)
#: Probability of 0, 1, 2 and 3 findings in an image.
FINDING_COUNT_P: tuple[float, ...] = (0.25, 0.40, 0.22, 0.13)

#: Fixed rule from local findings to global diagnoses; any other finding is "Other disease".
GLOBAL_RULE: dict[str, str] = {
    "Nodule/Mass": "Lung tumor",
    "Consolidation": "Pneumonia",
    "Lung Opacity": "Pneumonia",
    "Infiltration": "Pneumonia",
    "Lung cavity": "Tuberculosis",
    "Pulmonary fibrosis": "Tuberculosis",
    "Emphysema": "COPD",
}
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def stable_uid(*parts: str) -> str:
    """A deterministic UID under the UUID root ``2.25`` (UUID v5 of ``parts``; no timestamps).
    The name space string is part of every file written: changing it changes the DICOM bytes."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'medgrounder.synth/' + '/'.join(parts)).int}"


IMPLEMENTATION_UID = stable_uid("implementation")
N_READERS = 17
TRAIN_READERS = 3
TEST_READER = "R11"
READER_JITTER = 0.04  # of the box size, per coordinate
MONOCHROME1_FRAC = 0.15
NO_WINDOW_FRAC = 0.20
TWO_WINDOWS_FRAC = 0.25  # of the images with window tags
RESCALE_FRAC = 0.30
RESCALES = ((1.0, 0.0), (1.0, -1024.0), (2.0, -1000.0))  # (slope, intercept)
CONFLICT_FRAC = 0.04  # of abnormal train images: one reader says "No finding"
DUPLICATE_FRAC = 0.05  # of abnormal train images: one reader draws a finding twice


def global_labels_from_local(names: Iterable[str]) -> list[str]:
    """Local finding names -> canonical global labels in label order (``["No finding"]`` if none)."""
    out = set()
    for name in names:
        if name not in LOCAL_INDEX:
            raise ValueError(f"unknown local label {name!r}")
        out.add(GLOBAL_RULE.get(name, "Other disease"))
    return sorted(out, key=GLOBAL_INDEX.__getitem__) if out else [NO_FINDING]


@dataclass(frozen=True)
class _ImagePlan:
    """Everything needed to render and write one DICOM file (picklable for workers)."""

    index: int
    image_id: str
    split: str
    width: int
    height: int
    bits: int
    monochrome1: bool
    windows: int  # number of WindowCenter/WindowWidth values: 0, 1 or 2
    rescale: tuple[float, float] | None
    findings: tuple[tuple[str, Box], ...]


def _jitter(rng: np.random.Generator, box: Box, frac: float, w: int, h: int) -> Box:
    bw, bh = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-frac, frac, 4) * np.array([bw, bh, bw, bh])
    x1, y1, x2, y2 = (box[k] + d[k] for k in range(4))
    return round_box((max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))))


def _plan_vindr(n: int, seed: int, test_frac: float, min_side: int, max_side: int,
                classes: Sequence[str] = LOCAL_LABELS):
    """Draw every image's properties and every reader's boxes from one seeded generator;
    findings are drawn from ``classes`` (weighted by :data:`LOCAL_WEIGHTS`)."""
    if n < 1 or not 0 <= test_frac <= 1 or not 8 <= min_side <= max_side:
        raise ValueError(f"bad arguments: n={n}, test_frac={test_frac}, sides {min_side}..{max_side}")
    rng = np.random.default_rng(seed)
    n_test = round(n * test_frac)
    ids: dict[str, None] = {}  # insertion-ordered set
    while len(ids) < n:
        ids.setdefault(rng.bytes(16).hex())
    ids = list(ids)
    widths = rng.integers(min_side, max_side + 1, n)
    heights = rng.integers(min_side, max_side + 1, n)
    bits = rng.choice([12, 14, 16], n)
    mono1 = pick(rng, range(n), MONOCHROME1_FRAC)
    no_window = pick(rng, range(n), NO_WINDOW_FRAC)
    two_windows = pick(rng, [i for i in range(n) if i not in no_window], TWO_WINDOWS_FRAC)
    rescaled = pick(rng, range(n), RESCALE_FRAC)
    counts = rng.choice(len(FINDING_COUNT_P), n, p=FINDING_COUNT_P)
    weights = np.asarray([LOCAL_WEIGHTS[LOCAL_INDEX[c]] for c in classes], dtype=np.float64)
    class_p = weights / weights.sum()

    plans = []
    for i in range(n):
        w, h = int(widths[i]), int(heights[i])
        drawn = rng.choice(len(classes), int(counts[i]), p=class_p)
        boxes: list[Box] = []
        for _ in drawn:
            boxes.append(place_box(rng, w, h, boxes))
        findings = tuple((classes[c], b) for c, b in zip(drawn, boxes, strict=True))
        windows = 0 if i in no_window else 2 if i in two_windows else 1
        rescale = RESCALES[int(rng.integers(len(RESCALES)))] if i in rescaled else None
        plans.append(_ImagePlan(i, ids[i], "test" if i < n_test else "train", w, h, int(bits[i]),
                                i in mono1, windows, rescale, findings))

    # Readers: test images have one exact reader; train images three jittered ones, with
    # occasional reader conflicts and duplicate boxes.
    abnormal_train = [p.index for p in plans if p.split == "train" and p.findings]
    conflicts = pick(rng, abnormal_train, CONFLICT_FRAC, at_least_one=True)
    duplicates = pick(rng, [i for i in abnormal_train if i not in conflicts], DUPLICATE_FRAC, at_least_one=True)
    readers: list[list[tuple[str, list[tuple[str, Box]]]]] = []
    for p in plans:
        if p.split == "test":
            readers.append([(TEST_READER, list(p.findings))])
            continue
        rads = [f"R{r + 1}" for r in rng.choice(N_READERS, TRAIN_READERS, replace=False)]
        silent = int(rng.integers(TRAIN_READERS)) if p.index in conflicts else -1
        twice = int(rng.integers(TRAIN_READERS)) if p.index in duplicates else -1
        twice_finding = int(rng.integers(len(p.findings))) if p.findings else 0
        image_readers = []
        for r, rad in enumerate(rads):
            if r == silent:
                image_readers.append((rad, []))
                continue
            drawn = [(c, _jitter(rng, b, READER_JITTER, p.width, p.height)) for c, b in p.findings]
            if r == twice:
                c, b = drawn[twice_finding]
                again = _jitter(rng, b, READER_JITTER / 2, p.width, p.height)
                while iou(again, b) <= 0.5:
                    again = _jitter(rng, b, READER_JITTER / 2, p.width, p.height)
                drawn.append((c, again))
            image_readers.append((rad, drawn))
        readers.append(image_readers)
    return plans, readers, {"conflicts": len(conflicts), "duplicates": len(duplicates)}


def _dicom(plan: _ImagePlan, seed: int) -> pydicom.Dataset:
    """The plan's DICOM dataset: header tags and pixel data, deterministic in ``seed``."""
    rng = np.random.default_rng([seed, plan.index])
    maxval = 2**plan.bits - 1
    base, span = maxval * rng.uniform(0.12, 0.20), maxval * rng.uniform(0.42, 0.48)
    v = render_chest(plan.width, plan.height, plan.findings, rng)
    v *= np.float32(span)
    v += np.float32(base)
    stored = np.rint(np.clip(v, 0, maxval, out=v)).astype("<u2")
    windows = [(base + span / 2, span), (base + 0.6 * span, 1.5 * span)][: plan.windows]
    if plan.monochrome1:
        stored = (maxval - stored).astype("<u2")
        windows = [(maxval - c, wd) for c, wd in windows]
    slope, intercept = plan.rescale or (1.0, 0.0)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = stable_uid("vindr", str(seed), plan.image_id, "instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDGROUNDER"
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = plan.image_id
    ds.StudyInstanceUID = stable_uid("vindr", str(seed), plan.image_id, "study")
    ds.SeriesInstanceUID = stable_uid("vindr", str(seed), plan.image_id, "series")
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if plan.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = plan.height, plan.width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, plan.bits, plan.bits - 1
    ds.PixelRepresentation = 0
    if windows:
        ds.WindowCenter = [f"{slope * c + intercept:.1f}" for c, _ in windows]
        ds.WindowWidth = [f"{slope * wd:.1f}" for _, wd in windows]
    if plan.rescale:
        ds.RescaleIntercept, ds.RescaleSlope = f"{intercept:g}", f"{slope:g}"
        ds.RescaleType = "US"
    ds.PixelData = stored.tobytes()
    return ds


def _write_image(job: tuple[_ImagePlan, str, int]) -> None:
    plan, out, seed = job
    _dicom(plan, seed).save_as(dicom_path(out, plan.split, plan.image_id), enforce_file_format=True)


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _write_csvs(out: Path, plans: list[_ImagePlan], readers) -> None:
    (out / annotations_csv("train")).parent.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        ann_rows, label_rows = [], []
        for plan, image_readers in zip(plans, readers, strict=True):
            if plan.split != split:
                continue
            for rad, drawn in image_readers:
                if drawn:
                    ann_rows += [[plan.image_id, rad, c, *map(_fmt, b)] for c, b in drawn]
                else:
                    ann_rows.append([plan.image_id, rad, NO_FINDING, "", "", "", ""])
                names = {c for c, _ in drawn}
                glob = set(global_labels_from_local(names))
                label_rows.append([plan.image_id, rad, *(int(n in names) for n in LOCAL_LABELS),
                                   *(int(g in glob) for g in GLOBAL_LABELS)])
        with open(out / annotations_csv(split), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(ANNOTATION_COLUMNS)
            writer.writerows(ann_rows)
        with open(out / image_labels_csv(split), "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image_id", "rad_id", *LOCAL_LABELS, *GLOBAL_COLUMNS[split]])
            writer.writerows(label_rows)


def _write_kaggle_csv(out: Path, plans: list[_ImagePlan], readers) -> None:
    """Kaggle ``train.csv``: one row per box, one "No finding" row (class_id 14, no box) per
    reader who drew nothing; test images have no labels."""
    rows = []
    for plan, image_readers in zip(plans, readers, strict=True):
        if plan.split != "train":
            continue
        for rad, drawn in image_readers:
            if drawn:
                rows += [[plan.image_id, c, KAGGLE_CLASS_ID[c], rad, *map(_fmt, b)] for c, b in drawn]
            else:
                rows.append([plan.image_id, NO_FINDING, KAGGLE_NO_FINDING_ID, rad, "", "", "", ""])
    with open(out / KAGGLE_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(KAGGLE_COLUMNS)
        writer.writerows(rows)


def synth_vindr(out: str | Path, n: int, seed: int, test_frac: float = 0.2, min_side: int = 256,
                max_side: int = 512, workers: int = 1, layout: str = "physionet") -> dict:
    """Write a synthetic VinDr-CXR to ``out`` in ``layout`` (``physionet`` 1.0.0 or ``kaggle``
    VinBigData); return a summary.

    Image ``i < round(n * test_frac)`` goes to the test split. Output depends only on the
    arguments other than ``workers``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    start = time.perf_counter()
    out = Path(out)
    classes = KAGGLE_CLASSES if layout == "kaggle" else LOCAL_LABELS
    plans, readers, stats = _plan_vindr(n, seed, test_frac, min_side, max_side, classes)
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out), seed) for p in plans]
    run_jobs(_write_image, jobs, workers)
    if layout == "kaggle":
        _write_kaggle_csv(out, plans, readers)
    else:
        _write_csvs(out, plans, readers)
    n_test = sum(p.split == "test" for p in plans)
    return {
        "dataset": "vindr",
        "layout": layout,
        "out": str(out),
        "train": n - n_test,
        "test": n_test,
        "abnormal_fraction": round(sum(bool(p.findings) for p in plans) / n, 4),
        "findings": sum(len(p.findings) for p in plans),
        "reader_conflicts": stats["conflicts"],
        "duplicate_boxes": stats["duplicates"],
        "seconds": round(time.perf_counter() - start, 2),
    }
