"""Synthetic datasets in the official on-disk formats (design section 2).

``python -m medgrounder.synth vindr --out DIR --n N --seed S`` writes the PhysioNet VinDr-CXR
1.0.0 layout: ``train/<image_id>.dicom``, ``test/<image_id>.dicom`` (real DICOM files) and the
four csv files under ``annotations/``. ``--layout kaggle`` writes the Kaggle VinBigData layout
instead: ``train.csv`` (findings drawn from its 14 classes; no global labels) with the same
DICOM folders, the test images unlabelled as on Kaggle. Each local finding is a class-specific
pattern that fills its box (:data:`APPEARANCE`), so a model can learn to localise and name it;
global labels follow from the findings by :func:`global_labels_from_local`.

``python -m medgrounder.synth mscxr --out DIR`` writes MS-CXR's csv with MIMIC-CXR-JPG images
(:func:`synth_mscxr`); ``python -m medgrounder.synth captions --out DIR`` the three caption
corpora of PFMVG stage 1 in their layouts (:func:`synth_captions`). Their findings are the 8
MS-CXR categories drawn with the same patterns, and every phrase, caption and report names what is
drawn and where.

The same seed gives byte-identical files, whatever ``--workers``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
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
    MSCXR_CATEGORIES,
    NO_FINDING,
)

# --------------------------------------------------------------------------------------------
# VinDr-CXR

#: Test-set supports of the 22 local labels (LiteGPT table 8), used as class weights.
LOCAL_WEIGHTS: tuple[int, ...] = (
    220, 86, 194, 309, 2, 96, 1, 3, 8, 221, 58, 84, 9, 2, 20, 176, 111, 169, 18, 217, 11, 94,
)
#: Probability of 0, 1, 2 and 3 findings in an image.
FINDING_COUNT_P: tuple[float, ...] = (0.25, 0.40, 0.22, 0.13)

#: Appearance of each local finding: ``(shape, sign, texture)``. The pattern spans its box.
#: Shapes: ``rect`` (filled), ``ellipse`` (filled, inscribed), ``rect_ring`` / ``ellipse_ring``
#: (outlines), ``plus`` (centred bars), ``cross`` (both diagonals), ``diamond``, ``triangle``
#: (apex up), ``hatch`` (diagonal lines). Sign +1 is brighter (denser) than the surroundings,
#: -1 darker, by :data:`CONTRAST` of the window. Textures modulate the pattern between full and
#: :data:`TEXTURE_LOW` of that contrast: ``flat``, ``hstripes``, ``vstripes`` (6 stripes),
#: ``checker`` (4 x 4), ``dots`` (4 x 4 grid), ``rings`` (4 concentric bands), ``gradient``
#: (faint at the top, full at the bottom, as fluid settles).
#: No two findings share sign, texture and shape family (filled, outline, lines), so every class
#: can be told from a few patches of it, as readers tell findings by density and texture, not only
#: by outline; a shape-only difference (a filled ellipse against a filled rectangle) is visible
#: only at the box's corners, which tiny towers learn to see far more slowly than a texture.
APPEARANCE: dict[str, tuple[str, int, str]] = {
    "Aortic enlargement": ("ellipse", +1, "rings"),
    "Atelectasis": ("rect", -1, "hstripes"),
    "Calcification": ("plus", +1, "checker"),
    "Cardiomegaly": ("rect", +1, "flat"),
    "Clavicle fracture": ("cross", -1, "hstripes"),
    "Consolidation": ("rect", +1, "checker"),
    "Edema": ("ellipse", -1, "vstripes"),
    "Emphysema": ("ellipse_ring", -1, "flat"),
    "Enlarged PA": ("diamond", +1, "dots"),
    "ILD": ("hatch", -1, "flat"),
    "Infiltration": ("ellipse", +1, "hstripes"),
    "Lung Opacity": ("ellipse", +1, "gradient"),
    "Lung cavity": ("ellipse_ring", +1, "hstripes"),
    "Lung cyst": ("rect_ring", -1, "checker"),
    "Mediastinal shift": ("triangle", +1, "vstripes"),
    "Nodule/Mass": ("ellipse", -1, "flat"),
    "Pleural effusion": ("rect", -1, "gradient"),
    "Pleural thickening": ("rect_ring", +1, "flat"),
    "Pneumothorax": ("triangle", -1, "rings"),
    "Pulmonary fibrosis": ("hatch", +1, "flat"),
    "Rib fracture": ("plus", -1, "checker"),
    "Other lesion": ("diamond", -1, "dots"),
}
#: Shape families: within one sign and texture, shapes of different families stay distinct.
SHAPE_FAMILY = {"rect": "filled", "ellipse": "filled", "diamond": "filled", "triangle": "filled",
                "rect_ring": "outline", "ellipse_ring": "outline", "plus": "lines", "cross": "lines",
                "hatch": "lines"}
CONTRAST = 0.30
TEXTURE_LOW = 0.35

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

ANNOTATION_HEADER = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
KAGGLE_HEADER = ("image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max")
LAYOUTS = ("physionet", "kaggle")
GLOBAL_COLUMNS = {  # the official spellings of the 6 global columns per split
    "train": ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"),
    "test": GLOBAL_LABELS,
}
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def stable_uid(*parts: str) -> str:
    """A deterministic UID under the UUID root ``2.25`` (UUID v5 of ``parts``; no timestamps)."""
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


def _pick(rng: np.random.Generator, candidates: Sequence[int], frac: float, at_least_one: bool = False) -> set[int]:
    """Exactly ``round(frac * len)`` of ``candidates`` (at least one when asked and >= 2)."""
    k = round(frac * len(candidates))
    if at_least_one and len(candidates) >= 2:
        k = max(k, 1)
    return set(rng.choice(np.asarray(candidates, dtype=np.int64), k, replace=False).tolist()) if k else set()


def _round_box(box: Sequence[float]) -> Box:
    return tuple(round(float(v), 2) for v in box)  # type: ignore[return-value]


def _place_box(rng: np.random.Generator, w: int, h: int, earlier: list[Box], tries: int = 20,
               size: tuple[float, float] = (0.05, 0.30), margin: float = 0.10, max_iou: float = 0.3,
               digits: int | None = 2) -> Box:
    """A box of ``size`` (fractions of each side) inside the central ``margin``..``1 - margin``,
    IoU <= ``max_iou`` with ``earlier`` (the last try is kept when none fits); corners rounded to
    ``digits`` decimals (``None``: whole pixels)."""
    for _ in range(tries):
        bw, bh = rng.uniform(*size) * w, rng.uniform(*size) * h
        x1, y1 = rng.uniform(margin * w, (1 - margin) * w - bw), rng.uniform(margin * h, (1 - margin) * h - bh)
        box = (x1, y1, x1 + bw, y1 + bh)
        box = _round_box(box) if digits == 2 else tuple(float(round(v, digits)) for v in box)
        if all(iou(box, e) <= max_iou for e in earlier):
            break
    return box  # type: ignore[return-value]


def _jitter(rng: np.random.Generator, box: Box, frac: float, w: int, h: int) -> Box:
    bw, bh = box[2] - box[0], box[3] - box[1]
    d = rng.uniform(-frac, frac, 4) * np.array([bw, bh, bw, bh])
    x1, y1, x2, y2 = (box[k] + d[k] for k in range(4))
    return _round_box((max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))))


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
    mono1 = _pick(rng, range(n), MONOCHROME1_FRAC)
    no_window = _pick(rng, range(n), NO_WINDOW_FRAC)
    two_windows = _pick(rng, [i for i in range(n) if i not in no_window], TWO_WINDOWS_FRAC)
    rescaled = _pick(rng, range(n), RESCALE_FRAC)
    counts = rng.choice(len(FINDING_COUNT_P), n, p=FINDING_COUNT_P)
    weights = np.asarray([LOCAL_WEIGHTS[LOCAL_INDEX[c]] for c in classes], dtype=np.float64)
    class_p = weights / weights.sum()

    plans = []
    for i in range(n):
        w, h = int(widths[i]), int(heights[i])
        drawn = rng.choice(len(classes), int(counts[i]), p=class_p)
        boxes: list[Box] = []
        for _ in drawn:
            boxes.append(_place_box(rng, w, h, boxes))
        findings = tuple((classes[c], b) for c, b in zip(drawn, boxes, strict=True))
        windows = 0 if i in no_window else 2 if i in two_windows else 1
        rescale = RESCALES[int(rng.integers(len(RESCALES)))] if i in rescaled else None
        plans.append(_ImagePlan(i, ids[i], "test" if i < n_test else "train", w, h, int(bits[i]),
                                i in mono1, windows, rescale, findings))

    # Readers: test images have one exact reader; train images three jittered ones, with
    # occasional reader conflicts and duplicate boxes.
    abnormal_train = [p.index for p in plans if p.split == "train" and p.findings]
    conflicts = _pick(rng, abnormal_train, CONFLICT_FRAC, at_least_one=True)
    duplicates = _pick(rng, [i for i in abnormal_train if i not in conflicts], DUPLICATE_FRAC, at_least_one=True)
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


# Rendering: intensities ``u`` in display units (0 = black, 1 = white for the first window).

def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` on box-relative coordinates ``dx`` (1, w), ``dy`` (h, 1) in [0, 1]."""
    ex, ey = np.abs(2 * dx - 1), np.abs(2 * dy - 1)
    if shape == "rect":
        return np.ones((dy.shape[0], dx.shape[1]), dtype=bool)
    if shape == "ellipse":
        return ex**2 + ey**2 <= 1
    if shape == "ellipse_ring":
        r = ex**2 + ey**2
        return (r <= 1) & (r >= 0.45)
    if shape == "rect_ring":
        return np.maximum(ex, ey) >= 0.6
    if shape == "plus":
        return (ex <= 0.3) | (ey <= 0.3)
    if shape == "cross":
        return np.abs(ex - ey) <= 0.3
    if shape == "diamond":
        return ex + ey <= 1
    if shape == "triangle":
        return ex <= dy
    if shape == "hatch":
        return ((dx + dy) * 3) % 1 < 0.5
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray | float:
    """Contrast multiplier in [TEXTURE_LOW, 1] on box-relative coordinates."""
    if texture == "flat":
        return 1.0
    if texture == "gradient":
        return np.float32(TEXTURE_LOW) + np.float32(1 - TEXTURE_LOW) * np.broadcast_to(dy, (dy.shape[0], dx.shape[1]))
    if texture == "hstripes":
        on = np.floor(dy * 6) % 2 == 0
    elif texture == "vstripes":
        on = np.floor(dx * 6) % 2 == 0
    elif texture == "checker":
        on = (np.floor(dx * 4) + np.floor(dy * 4)) % 2 == 0
    elif texture == "rings":
        on = np.floor(np.sqrt((2 * dx - 1) ** 2 + (2 * dy - 1) ** 2) * 4) % 2 == 0
    elif texture == "dots":
        on = ((dx * 4) % 1 - 0.5) ** 2 + ((dy * 4) % 1 - 0.5) ** 2 <= 0.09
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(on, np.float32(1), np.float32(TEXTURE_LOW))


def _draw_finding(u: np.ndarray, name: str, box: Box, appearance: dict | None = None) -> None:
    """Add the class pattern of ``name`` (looked up in ``appearance``, default
    :data:`APPEARANCE`) to ``u`` over the pixels whose centres lie in ``box``."""
    shape, sign, texture = (appearance or APPEARANCE)[name]
    x1, y1, x2, y2 = box
    i0, i1 = math.ceil(x1 - 0.5), math.floor(x2 - 0.5) + 1
    j0, j1 = math.ceil(y1 - 0.5), math.floor(y2 - 0.5) + 1
    if i1 <= i0 or j1 <= j0:
        return
    dx = ((np.arange(i0, i1, dtype=np.float32) + 0.5 - x1) / (x2 - x1))[None, :]
    dy = ((np.arange(j0, j1, dtype=np.float32) + 0.5 - y1) / (y2 - y1))[:, None]
    level = _shape_mask(shape, dx, dy) * _texture(texture, dx, dy)
    u[j0:j1, i0:i1] += np.float32(sign * CONTRAST) * level


def _soft(r: np.ndarray, sharp: float) -> np.ndarray:
    """1 inside an ellipse (``r < 1``), 0 outside, with a linear edge."""
    return np.clip((1 - r) * sharp, 0, 1)


def _render_u(plan: _ImagePlan, rng: np.random.Generator) -> np.ndarray:
    """Chest-like picture with the plan's findings, float32 display units."""
    return render_chest(plan.width, plan.height, plan.findings, rng)


def render_chest(w: int, h: int, findings: Iterable[tuple[str, Box]], rng: np.random.Generator,
                 appearance: dict | None = None) -> np.ndarray:
    """Chest-like picture ``[h, w]`` (float32 display units: 0 black, 1 white) with each
    ``(class, pixel box)`` of ``findings`` drawn as its ``appearance`` pattern (default
    :data:`APPEARANCE`). Body, lungs, ribs, spine, heart, noise, collimation border and a bright
    marker vary with ``rng``."""
    f32 = np.float32
    x = ((np.arange(w, dtype=f32) + 0.5) / w)[None, :]
    y = ((np.arange(h, dtype=f32) + 0.5) / h)[:, None]
    j = rng.uniform(-0.02, 0.02, 6).astype(f32)
    u = _soft(((x - 0.5 - j[0]) / 0.46) ** 2 + ((y - 0.58) / 0.56) ** 2, 5) * f32(0.5) + f32(0.05)
    lungs = _soft(((x - 0.31 - j[1]) / (0.145 + j[3])) ** 2 + ((y - 0.47 - j[4]) / (0.33 + j[5])) ** 2, 4)
    lungs += _soft(((x - 0.69 - j[2]) / (0.145 + j[3])) ** 2 + ((y - 0.47 - j[4]) / (0.33 + j[5])) ** 2, 4)
    ribs = np.cos(f32(2 * np.pi) * (y * f32(9) + f32(2.5) * (x - f32(0.5)) ** 2))  # thin arcs
    u += (np.clip(ribs - f32(0.6), 0, None) * f32(0.12) - f32(0.28)) * lungs
    u += f32(0.2) * np.clip((0.085 - np.abs(x - 0.5)) / 0.03, 0, 1) * np.clip((y - 0.06) / 0.06, 0, 1)
    u += f32(0.12) * _soft(((x - 0.56) / 0.15) ** 2 + ((y - 0.7) / 0.11) ** 2, 3)
    u += f32(0.015) * rng.standard_normal((h, w), dtype=f32)
    # Collimation border below the window and a bright marker above it: the data's min..max
    # range differs from the window, so windowing matters.
    b = max(2, min(w, h) // 40)
    u[:b], u[-b:], u[:, :b], u[:, -b:] = -0.15, -0.15, -0.15, -0.15
    m = max(4, min(w, h) // 25)
    mx = 2 * b if rng.random() < 0.5 else w - 2 * b - m
    u[2 * b:2 * b + m, mx:mx + m] = 1.7
    for name, box in findings:
        _draw_finding(u, name, box, appearance)
    return u


def _dicom(plan: _ImagePlan, seed: int) -> pydicom.Dataset:
    """The plan's DICOM dataset: header tags and pixel data, deterministic in ``seed``."""
    rng = np.random.default_rng([seed, plan.index])
    maxval = 2**plan.bits - 1
    base, span = maxval * rng.uniform(0.12, 0.20), maxval * rng.uniform(0.42, 0.48)
    v = _render_u(plan, rng)
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
    path = Path(out) / plan.split / f"{plan.image_id}.dicom"
    _dicom(plan, seed).save_as(path, enforce_file_format=True)


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _write_csvs(out: Path, plans: list[_ImagePlan], readers) -> None:
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
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
        with open(ann_dir / f"annotations_{split}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(ANNOTATION_HEADER)
            writer.writerows(ann_rows)
        with open(ann_dir / f"image_labels_{split}.csv", "w", newline="", encoding="utf-8") as f:
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
    with open(out / "train.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(KAGGLE_HEADER)
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
    for split in ("train", "test"):
        (out / split).mkdir(parents=True, exist_ok=True)
    jobs = [(p, str(out), seed) for p in plans]
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_image, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _write_image(job)
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


# --------------------------------------------------------------------------------------------
# MS-CXR and the caption corpora (PFMVG)
#
# Every chest image carries 0-2 findings of the 8 MS-CXR categories, each one or two boxes
# drawn with its category's pattern (:data:`MSCXR_APPEARANCE`, VinDr's patterns where the names
# match). The MS-CXR phrase and every caption name the category and where it is (the patient's
# side, as radiologists write it: the image's left is the patient's right), so a model can learn
# to ground the phrase and to caption the picture.

#: Pattern of each MS-CXR category: VinDr's where the finding exists there, one more for Pneumonia.
MSCXR_APPEARANCE: dict[str, tuple[str, int, str]] = {
    "Pneumonia": ("diamond", +1, "hstripes"),
    "Pneumothorax": APPEARANCE["Pneumothorax"],
    "Consolidation": APPEARANCE["Consolidation"],
    "Atelectasis": APPEARANCE["Atelectasis"],
    "Edema": APPEARANCE["Edema"],
    "Cardiomegaly": APPEARANCE["Cardiomegaly"],
    "Lung Opacity": APPEARANCE["Lung Opacity"],
    "Pleural Effusion": APPEARANCE["Pleural effusion"],
}
#: Samples per category in MS-CXR 1.0 (its paper), the category weights of the synthetic set.
MSCXR_WEIGHTS: dict[str, int] = {
    "Pneumonia": 182, "Pneumothorax": 245, "Consolidation": 117, "Atelectasis": 61,
    "Edema": 46, "Cardiomegaly": 333, "Lung Opacity": 82, "Pleural Effusion": 96,
}
#: Phrasings of each category; ``{loc}`` becomes e.g. "right lower" or "bilateral".
MSCXR_PHRASES: dict[str, tuple[str, ...]] = {
    "Pneumonia": ("{loc} pneumonia", "pneumonia in the {loc} lung", "{loc} opacity consistent with pneumonia"),
    "Pneumothorax": ("{loc} pneumothorax", "small {loc} pneumothorax", "{loc} apical pneumothorax"),
    "Consolidation": ("{loc} consolidation", "consolidation in the {loc} lung", "dense {loc} consolidation"),
    "Atelectasis": ("{loc} atelectasis", "{loc} subsegmental atelectasis", "atelectasis in the {loc} lung"),
    "Edema": ("{loc} pulmonary edema", "edema in the {loc} lung", "{loc} interstitial edema"),
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette", "moderate cardiomegaly"),
    "Lung Opacity": ("{loc} opacity", "{loc} lung opacity", "hazy opacity in the {loc} lung"),
    "Pleural Effusion": ("{loc} pleural effusion", "small {loc} effusion", "{loc} pleural fluid"),
}
MSCXR_CSV = "MS_CXR_Local_Alignment_v1.1.0.csv"
MSCXR_HEADER = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width",
                "image_height", "path", "split")
MSCXR_SPLIT_P = (("train", 0.7), ("val", 0.1), ("test", 0.2))  # the official column, by patient
FINDINGS_PER_IMAGE_P = (0.7, 0.3)  # 1 or 2 findings (of different categories) in an MS-CXR image
TWO_BOXES_P = 0.2  # a finding drawn as two boxes (not Cardiomegaly)
REGION_SIZE = (0.18, 0.40)  # box sides, fractions of the image's
JPEG_QUALITY = 95


@dataclass(frozen=True)
class _ChestPlan:
    """One synthetic chest image: its size and findings ``((category, (box, ...)), ...)`` in
    whole pixels (picklable for workers)."""

    index: int
    width: int
    height: int
    findings: tuple[tuple[str, tuple[Box, ...]], ...]


def location_words(boxes: Sequence[Box], width: float, height: float) -> str:
    """Where boxes sit, in report words: ``"right lower"``, ``"left"``, ``"bilateral upper"``...

    Side is the patient's (the image's left half is the right lung); ``bilateral`` when the boxes'
    centres fall on both halves. Zone from the mean centre height: upper (< 40 %), mid, lower
    (>= 65 %)."""
    sides = {"right" if (b[0] + b[2]) / 2 < width / 2 else "left" for b in boxes}
    side = "bilateral" if len(sides) == 2 else sides.pop()
    cy = float(np.mean([(b[1] + b[3]) / 2 for b in boxes])) / height
    zone = "upper" if cy < 0.40 else "mid" if cy < 0.65 else "lower"
    return f"{side} {zone}"


def finding_phrase(category: str, boxes: Sequence[Box], width: float, height: float, choice: int) -> str:
    """Phrase ``choice`` (modulo the pool) of ``category`` with its location filled in."""
    pool = MSCXR_PHRASES[category]
    return pool[choice % len(pool)].format(loc=location_words(boxes, width, height))


def _plan_chests(rng: np.random.Generator, n: int, min_side: int, max_side: int,
                 count_p: Sequence[float]) -> list[_ChestPlan]:
    """``n`` images; ``count_p[k]`` is the probability of ``k`` findings (distinct categories,
    drawn by :data:`MSCXR_WEIGHTS`), boxes of :data:`REGION_SIZE` that barely overlap."""
    if n < 1 or not 32 <= min_side <= max_side:
        raise ValueError(f"bad arguments: n={n}, sides {min_side}..{max_side}")
    cats = list(MSCXR_CATEGORIES)
    p = np.asarray([MSCXR_WEIGHTS[c] for c in cats], dtype=np.float64)
    p /= p.sum()
    plans = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        k = int(rng.choice(len(count_p), p=count_p))
        chosen = rng.choice(len(cats), k, replace=False, p=p) if k else []
        placed: list[Box] = []
        findings = []
        for c in chosen:
            n_boxes = 2 if cats[c] != "Cardiomegaly" and rng.random() < TWO_BOXES_P else 1
            boxes = []
            for _ in range(n_boxes):
                box = _place_box(rng, w, h, placed, tries=50, size=REGION_SIZE, margin=0.06,
                                 max_iou=0.0, digits=None)
                placed.append(box)
                boxes.append(box)
            findings.append((cats[c], tuple(sorted(boxes))))
        plans.append(_ChestPlan(i, w, h, tuple(findings)))
    return plans


def _chest_pixels(plan: _ChestPlan, seed: int, salt: str) -> np.ndarray:
    """8-bit picture of a plan (deterministic in ``seed``, ``salt`` and the plan's index)."""
    rng = np.random.default_rng([seed, plan.index, sum(salt.encode())])
    drawn = [(c, b) for c, boxes in plan.findings for b in boxes]
    u = render_chest(plan.width, plan.height, drawn, rng, MSCXR_APPEARANCE)
    return np.rint(np.clip(u, 0.0, 1.0) * 255).astype(np.uint8)


def _write_jpg(job: tuple[_ChestPlan, str, int, str]) -> None:
    from PIL import Image

    plan, path, seed, salt = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_chest_pixels(plan, seed, salt)).save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_jpgs(jobs: list[tuple[_ChestPlan, str, int, str]], workers: int) -> None:
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_jpg, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _write_jpg(job)


def _mimic_ids(rng: np.random.Generator, n_patients: int, images_per_patient: Sequence[int]):
    """MIMIC-CXR-style identifiers: per image ``(subject_id, study_id, dicom_id)`` (8-digit
    subject ``1xxxxxxx``, study ``5xxxxxxx``, dicom ``8hex-8hex-8hex-8hex-8hex``), distinct."""
    subjects = rng.choice(10_000_000, n_patients, replace=False) + 10_000_000
    studies = rng.choice(10_000_000, sum(images_per_patient), replace=False) + 50_000_000
    out, k = [], 0
    for subject, count in zip(subjects, images_per_patient, strict=True):
        for _ in range(count):
            dicom = "-".join(rng.bytes(4).hex() for _ in range(5))
            out.append((f"{int(subject)}", f"{int(studies[k])}", dicom))
            k += 1
    return out


def mimic_jpg_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom_id>.jpg`` (MIMIC-CXR-JPG 2.0.0 layout)."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _patients(rng: np.random.Generator, n_images: int) -> list[int]:
    """Images per patient (1-3) summing to ``n_images``."""
    counts = []
    while sum(counts) < n_images:
        counts.append(int(min(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]), n_images - sum(counts))))
    return counts


def _split_by_patient(rng: np.random.Generator, n_patients: int, fractions=MSCXR_SPLIT_P) -> list[str]:
    order = rng.permutation(n_patients)
    bounds = np.cumsum([round(f * n_patients) for _, f in fractions[:-1]])
    split = ["" for _ in range(n_patients)]
    for rank, patient in enumerate(order):
        split[patient] = fractions[int(np.searchsorted(bounds, rank, side="right"))][0]
    return split


def synth_mscxr(out: str | Path, n: int = 200, seed: int = 0, min_side: int = 320, max_side: int = 512,
                workers: int = 1) -> dict:
    """Write a synthetic MS-CXR to ``out``: :data:`MSCXR_CSV` (design section 5: one row per box;
    rows sharing an image and a phrase are one sample) and its ``n`` images as MIMIC-CXR-JPG
    files under ``out/files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``, 1-3 images per patient.

    The ``split`` column is an official-style split by patient (7:1:2). Output depends only on
    the arguments other than ``workers``.
    """
    start = time.perf_counter()
    out = Path(out)
    rng = np.random.default_rng([seed, 7])
    plans = _plan_chests(rng, n, min_side, max_side, (0.0, *FINDINGS_PER_IMAGE_P))
    per_patient = _patients(rng, n)
    ids = _mimic_ids(rng, len(per_patient), per_patient)
    patient_split = _split_by_patient(rng, len(per_patient))
    image_split = [s for s, count in zip(patient_split, per_patient, strict=True) for _ in range(count)]
    rows, jobs = [], []
    for plan, (subject, study, dicom), split in zip(plans, ids, image_split, strict=True):
        path = mimic_jpg_path(subject, study, dicom)
        jobs.append((plan, str(out / path), seed, "mscxr"))
        for category, boxes in plan.findings:
            phrase = finding_phrase(category, boxes, plan.width, plan.height, int(rng.integers(1 << 16)))
            for x1, y1, x2, y2 in boxes:
                rows.append([dicom, category, phrase, int(x1), int(y1), int(x2 - x1), int(y2 - y1),
                             plan.width, plan.height, path, split])
    _write_jpgs(jobs, workers)
    with open(out / MSCXR_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MSCXR_HEADER)
        writer.writerows(rows)
    samples = {(r[0], r[2]): r[1] for r in rows}
    return {"dataset": "mscxr", "out": str(out), "images": n, "patients": len(per_patient),
            "samples": len(samples), "boxes": len(rows),
            "categories": {c: list(samples.values()).count(c) for c in MSCXR_CATEGORIES},
            "seconds": round(time.perf_counter() - start, 2)}


# Caption corpora. Each caption states every drawn finding with its location, or that there
# is none, in the corpus's own style.

ROCO_SPLITS = ("train", "validation", "test")
CLEF_SPLITS = ("train", "valid")
MIMIC_SPLITS = ("train", "validate", "test")
CAPTION_SPLIT_P = (0.7, 0.1, 0.2)
CAPTION_COUNT_P = (0.25, 0.5, 0.25)  # 0, 1 or 2 findings
NON_RADIOLOGY_FRAC = 0.15  # ROCO images written to the non-radiology subset


def _finding_sentences(plan: _ChestPlan) -> list[str]:
    return [finding_phrase(c, boxes, plan.width, plan.height, k) for k, (c, boxes) in enumerate(plan.findings)]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def roco_caption(plan: _ChestPlan) -> str:
    found = _finding_sentences(plan)
    return f"Chest X-ray showing {_join(found)}." if found else "Chest X-ray with no acute abnormality."


def clef_caption(plan: _ChestPlan) -> str:
    found = _finding_sentences(plan)
    return f"Chest radiograph demonstrating {_join(found)}" if found else "Normal chest radiograph"


def mimic_report(plan: _ChestPlan) -> str:
    """A free-text report in MIMIC-CXR's layout: header lines, then FINDINGS and IMPRESSION."""
    found = _finding_sentences(plan)
    if found:
        findings = " ".join(f"There is {s}." for s in found)
        impression = _join(found).capitalize() + "."
    else:
        findings = "The lungs are clear. The cardiomediastinal silhouette is normal."
        impression = "No acute cardiopulmonary process."
    return ("                                 FINAL REPORT\n"
            " EXAMINATION:  CHEST (PA AND LAT)\n \n"
            " INDICATION:  ___ with shortness of breath.\n \n"
            " COMPARISON:  None.\n \n"
            f" FINDINGS:\n \n {findings}\n \n"
            f" IMPRESSION:\n \n {impression}\n")


def _assign(n: int, names: Sequence[str], fractions: Sequence[float]) -> list[str]:
    """The first ``round(f * n)`` items to the first name and so on (the last takes the rest)."""
    out, start = [], 0
    for k, name in enumerate(names):
        count = n - start if k == len(names) - 1 else round(fractions[k] * n)
        out += [name] * count
        start += count
    return out


def _write_tsv(path: Path, rows: Iterable[Sequence[str]], header: Sequence[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def synth_captions(out: str | Path, n: int = 200, seed: int = 0, min_side: int = 256, max_side: int = 448,
                   workers: int = 1) -> dict:
    """Write the three caption corpora of PFMVG stage 1, ``n`` images each, in their layouts:

    - ``roco/data/{train,validation,test}/{radiology,non-radiology}/captions.txt`` (TAB: id,
      caption) and ``images/<ROCO_xxxxx>.jpg`` beside it;
    - ``imageclef2022/caption_prediction_{train,valid}.csv`` (TAB, header ``ID caption``) and
      ``{train,valid}/<ID>.jpg``;
    - ``mimic-cxr/``: ``mimic-cxr-2.0.0-split.csv`` (``dicom_id,study_id,subject_id,split``),
      the reports ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt`` and the images
      ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``.
    """
    start = time.perf_counter()
    out = Path(out)
    rng = np.random.default_rng([seed, 11])
    jobs = []
    # ROCO
    plans = _plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    splits = _assign(n, ROCO_SPLITS, CAPTION_SPLIT_P)
    other = _pick(rng, range(n), NON_RADIOLOGY_FRAC)
    roco_rows: dict[tuple[str, str], list] = {}
    for plan, split in zip(plans, splits, strict=True):
        rid = f"ROCO_{plan.index + 1:05d}"
        subset = "non-radiology" if plan.index in other else "radiology"
        caption = "Clinical photograph of the skin." if subset == "non-radiology" else roco_caption(plan)
        folder = out / "roco" / "data" / split / subset
        roco_rows.setdefault((split, subset), []).append([rid, f" {caption}"])
        jobs.append((plan, str(folder / "images" / f"{rid}.jpg"), seed, "roco"))
    for (split, subset), rows in roco_rows.items():
        _write_tsv(out / "roco" / "data" / split / subset / "captions.txt", rows)
    # ImageCLEF 2022 caption prediction
    plans = _plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    splits = _assign(n, CLEF_SPLITS, (0.8, 0.2))
    clef_rows: dict[str, list] = {s: [] for s in CLEF_SPLITS}
    for plan, split in zip(plans, splits, strict=True):
        cid = f"ImageCLEFmedCaption_2022_{split}_{plan.index + 1:06d}"
        clef_rows[split].append([cid, clef_caption(plan)])
        jobs.append((plan, str(out / "imageclef2022" / split / f"{cid}.jpg"), seed, "clef"))
    for split, rows in clef_rows.items():
        _write_tsv(out / "imageclef2022" / f"caption_prediction_{split}.csv", rows, ("ID", "caption"))
    # MIMIC-CXR reports + JPG, one image per study
    plans = _plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    per_patient = _patients(rng, n)
    ids = _mimic_ids(rng, len(per_patient), per_patient)
    patient_split = _split_by_patient(rng, len(per_patient), tuple(zip(MIMIC_SPLITS, CAPTION_SPLIT_P, strict=True)))
    image_split = [s for s, count in zip(patient_split, per_patient, strict=True) for _ in range(count)]
    split_rows = []
    for plan, (subject, study, dicom), split in zip(plans, ids, image_split, strict=True):
        path = out / "mimic-cxr" / mimic_jpg_path(subject, study, dicom)
        jobs.append((plan, str(path), seed, "mimic"))
        report = path.parent.with_suffix(".txt")
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(mimic_report(plan), encoding="utf-8")
        split_rows.append([dicom, study, subject, split])
    with open(out / "mimic-cxr" / "mimic-cxr-2.0.0-split.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("dicom_id", "study_id", "subject_id", "split"))
        writer.writerows(split_rows)
    _write_jpgs(jobs, workers)
    return {"dataset": "captions", "out": str(out), "images_per_corpus": n,
            "roco_non_radiology": len(other), "seconds": round(time.perf_counter() - start, 2)}


# --------------------------------------------------------------------------------------------
# Command line


def _cmd_vindr(args: argparse.Namespace) -> dict:
    return synth_vindr(args.out, args.n, args.seed, test_frac=args.test_frac,
                       min_side=args.min_side, max_side=args.max_side, workers=args.workers,
                       layout=args.layout)


def build_parser() -> argparse.ArgumentParser:
    """The ``synth`` parser: one subcommand per dataset, each sets ``func(args) -> summary``."""
    parser = argparse.ArgumentParser(prog="python -m medgrounder.synth",
                                     description="Write synthetic datasets in the official on-disk formats.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    p = sub.add_parser("vindr", help="VinDr-CXR: PhysioNet 1.0.0 or Kaggle VinBigData layout (DICOM + csv)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-frac", type=float, default=0.2)
    p.add_argument("--min-side", type=int, default=256)
    p.add_argument("--max-side", type=int, default=512)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--layout", choices=LAYOUTS, default="physionet",
                   help="physionet (annotations/*.csv, default) or kaggle (train.csv)")
    p.set_defaults(func=_cmd_vindr)
    for name, func, default_sides in (("mscxr", synth_mscxr, (320, 512)), ("captions", synth_captions, (256, 448))):
        help_text = ("MS-CXR: the local alignment csv + MIMIC-CXR-JPG images" if name == "mscxr" else
                     "caption corpora: ROCO captions.txt, ImageCLEF 2022 caption_prediction_*.csv, "
                     "MIMIC-CXR reports + split csv + JPG images")
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--n", type=int, default=200, help="number of images (per corpus for captions; default 200)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--min-side", type=int, default=default_sides[0])
        p.add_argument("--max-side", type=int, default=default_sides[1])
        p.add_argument("--workers", type=int, default=1)
        p.set_defaults(func=lambda a, f=func: f(a.out, n=a.n, seed=a.seed, min_side=a.min_side,
                                                  max_side=a.max_side, workers=a.workers))
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    summary = args.func(args)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
