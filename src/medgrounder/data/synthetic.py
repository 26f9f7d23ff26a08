"""What the synthetic writers of VinDr-CXR, MS-CXR and the caption corpora share: the chest
renderer with a class-specific pattern per finding, box placement, and the MS-CXR-category chest
plans, phrases and MIMIC-style identifiers of the PFMVG sets.

Each local finding is a pattern that fills its box (:data:`APPEARANCE`), so a model can learn to
localise and name it. The MS-CXR and caption images carry 0-2 findings of the 8 MS-CXR
categories, each one or two boxes drawn with its category's pattern (:data:`MSCXR_APPEARANCE`,
VinDr's patterns where the names match); the MS-CXR phrase and every caption name the category
and where it is (the patient's side, as radiologists write it: the image's left is the patient's
right), so a model can learn to ground the phrase and to caption the picture.

Every draw comes from a generator the caller seeds, in a fixed order: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from medgrounder.core.boxes import Box, iou
from medgrounder.core.labels import MSCXR_CATEGORIES

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


def pick(rng: np.random.Generator, candidates: Sequence[int], frac: float, at_least_one: bool = False) -> set[int]:
    """Exactly ``round(frac * len)`` of ``candidates`` (at least one when asked and >= 2)."""
    k = round(frac * len(candidates))
    if at_least_one and len(candidates) >= 2:
        k = max(k, 1)
    return set(rng.choice(np.asarray(candidates, dtype=np.int64), k, replace=False).tolist()) if k else set()


def round_box(box: Sequence[float]) -> Box:
    """Corners to 2 decimals, as the csv files write them."""
    return tuple(round(float(v), 2) for v in box)  # type: ignore[return-value]


def place_box(rng: np.random.Generator, w: int, h: int, earlier: list[Box], tries: int = 20,
              size: tuple[float, float] = (0.05, 0.30), margin: float = 0.10, max_iou: float = 0.3,
              digits: int | None = 2) -> Box:
    """A box of ``size`` (fractions of each side) inside the central ``margin``..``1 - margin``,
    IoU <= ``max_iou`` with ``earlier`` (the last try is kept when none fits); corners rounded to
    ``digits`` decimals (``None``: whole pixels)."""
    for _ in range(tries):
        bw, bh = rng.uniform(*size) * w, rng.uniform(*size) * h
        x1, y1 = rng.uniform(margin * w, (1 - margin) * w - bw), rng.uniform(margin * h, (1 - margin) * h - bh)
        box = (x1, y1, x1 + bw, y1 + bh)
        box = round_box(box) if digits == 2 else tuple(float(round(v, digits)) for v in box)
        if all(iou(box, e) <= max_iou for e in earlier):
            break
    return box  # type: ignore[return-value]


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


# Chest plans of the MS-CXR categories (MS-CXR and the caption corpora)

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
TWO_BOXES_P = 0.2  # a finding drawn as two boxes (not Cardiomegaly)
REGION_SIZE = (0.18, 0.40)  # box sides, fractions of the image's
JPEG_QUALITY = 95


@dataclass(frozen=True)
class ChestPlan:
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


def plan_chests(rng: np.random.Generator, n: int, min_side: int, max_side: int,
                count_p: Sequence[float]) -> list[ChestPlan]:
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
                box = place_box(rng, w, h, placed, tries=50, size=REGION_SIZE, margin=0.06,
                                max_iou=0.0, digits=None)
                placed.append(box)
                boxes.append(box)
            findings.append((cats[c], tuple(sorted(boxes))))
        plans.append(ChestPlan(i, w, h, tuple(findings)))
    return plans


def chest_pixels(plan: ChestPlan, seed: int, salt: str) -> np.ndarray:
    """8-bit picture of a plan (deterministic in ``seed``, ``salt`` and the plan's index)."""
    rng = np.random.default_rng([seed, plan.index, sum(salt.encode())])
    drawn = [(c, b) for c, boxes in plan.findings for b in boxes]
    u = render_chest(plan.width, plan.height, drawn, rng, MSCXR_APPEARANCE)
    return np.rint(np.clip(u, 0.0, 1.0) * 255).astype(np.uint8)


def _write_jpg(job: tuple[ChestPlan, str, int, str]) -> None:
    from PIL import Image

    plan, path, seed, salt = job
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(chest_pixels(plan, seed, salt)).save(path, format="JPEG", quality=JPEG_QUALITY)


def run_jobs(write: Callable[[tuple], object], jobs: Sequence[tuple], workers: int) -> None:
    """``write(job)`` for every job, on ``workers`` processes (each job's output depends on the
    job alone, so the files do not depend on ``workers``)."""
    if workers > 1:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(write, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            write(job)


def write_jpgs(jobs: list[tuple[ChestPlan, str, int, str]], workers: int) -> None:
    """Write ``(plan, path, seed, salt)`` jobs as JPGs."""
    run_jobs(_write_jpg, jobs, workers)


def mimic_ids(rng: np.random.Generator, n_patients: int, images_per_patient: Sequence[int]):
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


def patient_image_counts(rng: np.random.Generator, n_images: int) -> list[int]:
    """Images per patient (1-3) summing to ``n_images``."""
    counts = []
    while sum(counts) < n_images:
        counts.append(int(min(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]), n_images - sum(counts))))
    return counts


def split_patients(rng: np.random.Generator, n_patients: int,
                   fractions: Sequence[tuple[str, float]]) -> list[str]:
    """A split name per patient: a seeded permutation cut at ``round(f * n_patients)`` per
    ``(name, f)`` of ``fractions`` (the last takes the rest)."""
    order = rng.permutation(n_patients)
    bounds = np.cumsum([round(f * n_patients) for _, f in fractions[:-1]])
    split = ["" for _ in range(n_patients)]
    for rank, patient in enumerate(order):
        split[patient] = fractions[int(np.searchsorted(bounds, rank, side="right"))][0]
    return split


def mimic_cohort(rng: np.random.Generator, n_images: int,
                 fractions: Sequence[tuple[str, float]]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``n_images`` MIMIC-CXR-style images of 1-3 per patient: their ``(subject_id, study_id,
    dicom_id)`` and their split, drawn per patient (so no patient straddles two splits)."""
    per_patient = patient_image_counts(rng, n_images)
    ids = mimic_ids(rng, len(per_patient), per_patient)
    patient_split = split_patients(rng, len(per_patient), fractions)
    return ids, [s for s, count in zip(patient_split, per_patient, strict=True) for _ in range(count)]
