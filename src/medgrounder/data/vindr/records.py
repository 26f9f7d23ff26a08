"""VinDr-CXR labels: csv annotations + DICOM headers -> one record per image.

The files are those of :mod:`medgrounder.data.vindr.layout` (PhysioNet 1.0.0 or Kaggle
VinBigData). Kaggle's ``train.csv`` has the 14 classes of
:data:`~medgrounder.core.labels.KAGGLE_CLASSES` and "No finding" = 14 with empty boxes, no global
labels (records get ``global_labels == []``) and no labelled test split.

Label building is split in two so ``prepare`` can take image sizes from its decoding workers:
:func:`parse_physionet` / :func:`parse_kaggle` read the csv files into per-image
:class:`Readings` (no image I/O), :func:`build_records` clips boxes to the image, fuses the
readers' boxes per (image, class) by ``label_fusion`` (:data:`LABEL_FUSIONS`) and removes images
where one reader says "No finding" while another draws a box or, in the label csv, gives a label.
Global labels are the union over the readers' rows of the label csv.

Label fusion (``data.label_fusion``, ``prepare --label-fusion``):

- ``dedup`` (default, LiteGPT's reproduction): :func:`~medgrounder.core.boxes.dedup_boxes`
  merges boxes of a class across and within readers above ``dedup_iou`` (``dedup_mode``), on
  every split.
- ``wbf``: ``ensemble_boxes.weighted_boxes_fusion`` per image, each reader one "model" with score
  1 per box, boxes normalised by the image size, labels per class, ``iou_thr = fusion_iou``: a
  fused box is the mean of its cluster's boxes and its score the readers' agreement, kept as the
  record's ``agreement``. With ``fusion_conf_type: avg`` that is min(readers, boxes in the
  cluster) / readers, the fraction of the readers who drew it when each draws a finding once;
  ``box_and_model_avg`` counts distinct readers exactly (the two differ only where one reader's
  own boxes fall into one cluster). ``min_votes`` drops fused boxes fewer readers agree on
  (``round(agreement * readers)``); an image left without boxes is removed.
- ``none``: every reader's box as drawn (clipped), for consensus labels.

Fusion is for multi-reader splits: a split with at most one reader per image, or one the release
documents as a consensus (PhysioNet's test split: one consensus of 5 readers), is never fused by
``wbf`` (its boxes are kept as drawn and the report says so in ``fusion_applied`` /
``fusion_skipped``); ``dedup`` keeps today's behaviour on every split.

Bad rows never stop a run and are never silently wrong (README, "Bad input"):
a row whose ``image_id`` is not a plain file name is skipped; an image with a row that cannot be
read (unknown class, class_id that does not match, a coordinate that is not a finite number)
is removed, as its truth is incomplete; inverted corners are swapped; a box is clipped to the
image and dropped when nothing of it is left inside (an image left without any of its readers'
boxes is removed). Each case is counted, with file and line, in the report. The result does not depend on row order
or ``PYTHONHASHSEED``: every set is sorted before it is used.
"""

from __future__ import annotations

import csv
import functools
import gc
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from medgrounder.core.boxes import Box, dedup_boxes
from medgrounder.core.labels import (
    GLOBAL_INDEX,
    GLOBAL_LABELS,
    KAGGLE_CLASS_ID,
    KAGGLE_NO_FINDING_ID,
    LOCAL_INDEX,
    LOCAL_LABELS,
    NO_FINDING,
    canonical_global,
)
from medgrounder.data.vindr.dicom import DicomReadError, read_dicom_size
from medgrounder.data.vindr.layout import (
    ANNOTATION_COLUMNS,
    BOX_COLUMNS,
    KAGGLE_COLUMNS,
    KAGGLE_CSV,
    LAYOUTS,
    SPLITS,
    annotations_csv,
    dicom_path,
    image_labels_csv,
    unsafe_image_id,
)


@dataclass
class VinDrRecord:
    image_id: str
    split: str  # "train" | "test"
    path: str  # the DICOM file
    width: int  # original size from the DICOM header (Columns)
    height: int  # (Rows)
    findings: list[tuple[str, Box]]  # fused pixel boxes (label_fusion), sorted by (label index, box)
    global_labels: list[str]  # canonical GLOBAL_LABELS in label order; ["No finding"] when none;
    # [] when the layout has no global labels (Kaggle)
    image: str | None = None  # the resized cache image, for records read from prepared output
    # the label csv's "No finding" column (any reader); None without a label csv (Kaggle) or
    # from a prepared cache written before it was kept. LiteGPT's binary truth is 1 - this column.
    no_finding: bool | None = None
    # label_fusion=wbf on a multi-reader split: per finding, the fraction of readers who agree
    # (the fused score, in (0, 1]); None otherwise
    agreement: list[float] | None = None


def _without_gc(fn):
    """Run ``fn`` with the cyclic garbage collector paused: the label objects hold no cycles, and
    its passes over tens of thousands of new objects took 40 % of building the Kaggle labels."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@dataclass(slots=True)
class Readings:
    """What the readers said about one image, before clipping and de-duplication."""

    boxes: dict[str, list[Box]] = field(default_factory=dict)  # class -> boxes of all readers
    box_readers: dict[str, list[str]] = field(default_factory=dict)  # class -> the reader of each box
    drawers: set[str] = field(default_factory=set)  # readers who drew a box
    no_finding: set[str] = field(default_factory=set)  # readers who said "No finding"
    global_labels: set[str] | None = None  # union over readers; None when not in the label csv
    label_no_finding: set[str] = field(default_factory=set)  # readers with only "No finding" = 1 (label csv)
    labellers: set[str] = field(default_factory=set)  # readers with any other label = 1 (label csv)
    problems: list[str] = field(default_factory=list)  # unreadable rows: the image is removed
    swapped: int = 0  # boxes whose inverted corners were swapped

    @property
    def readers(self) -> set[str]:
        """The readers of the box csv's rows (a box or "No finding")."""
        return self.drawers | self.no_finding

    @property
    def box_conflict(self) -> bool:
        return bool(self.drawers and self.no_finding)

    @property
    def label_conflict(self) -> bool:
        """A reader says only "No finding" in the label csv (and draws nothing) while another gives a
        label or draws a box: LiteGPT section 4.2's conflict."""
        silent = self.label_no_finding - self.drawers
        return bool(silent and (self.labellers | self.drawers) - silent)

    @property
    def conflict(self) -> bool:
        return self.box_conflict or self.label_conflict


@dataclass
class Labels:
    """The parsed csv files of one split: ``readings`` by image id."""

    split: str
    readings: dict[str, Readings]
    has_global: bool  # the layout has image-level labels (PhysioNet)
    bad_ids: list[dict] = field(default_factory=list)  # rows skipped for an unsafe id (layout.unsafe_image_id)
    consensus: bool = False  # the release documents one consensus reading per image (PhysioNet test)

    @property
    def max_readers(self) -> int:
        """The most readers of one image in the box csv (0 without box rows)."""
        return max((len(r.readers) for r in self.readings.values()), default=0)

    @property
    def multi_reader(self) -> bool:
        """Whether label fusion applies: some image has two or more readers and the split is not
        a documented consensus."""
        return not self.consensus and self.max_readers > 1

    @property
    def conflicts(self) -> list[str]:
        return sorted(i for i, r in self.readings.items() if r.conflict and not r.problems)

    @property
    def bad_rows(self) -> dict[str, list[str]]:
        """Image id -> why its rows cannot be read (the image is removed)."""
        return dict(sorted((i, r.problems) for i, r in self.readings.items() if r.problems))

    def kept_ids(self) -> list[str]:
        """Image ids without reader conflicts or unreadable rows, sorted."""
        return sorted(i for i, r in self.readings.items() if not (r.conflict or r.problems))


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs; ``ValueError`` naming the file if a column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)  # rows as lists, zipped with the header: twice DictReader's speed
        try:
            header = [c.strip() for c in next(reader, [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing} (header: {header})")
            rows = [(reader.line_num, dict(zip(header, row, strict=False))) for row in reader if row]
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    return header, rows


def _cell(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _coord(value: str | None) -> float | None:
    """A finite coordinate, or ``None``."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _flag(value: str | None, path: Path, line: int, column: str) -> bool:
    v = (value or "").strip()
    if v in ("", "0", "0.0"):
        return False
    if v in ("1", "1.0"):
        return True
    raise ValueError(f"{path}, line {line}: {column}={value!r} is not 0/1")


def _global_columns(header: list[str], path: Path) -> dict[str, str]:
    """Canonical global label -> the column spelling used in this file."""
    found = {canonical_global(c): c for c in header if canonical_global(c) in GLOBAL_INDEX}
    missing = [g for g in GLOBAL_LABELS if g not in found]
    if missing:
        raise ValueError(f"{path}: missing global label column(s) {missing} (header: {header})")
    return found


def _reading(readings: dict[str, Readings], bad_ids: list[dict], path: Path, line: int,
             iid: str) -> Readings | None:
    """The image's readings, or ``None`` (the row recorded in ``bad_ids``) for an id that is not
    a plain name: it could name a file outside the root."""
    if (r := readings.get(iid)) is not None:  # checked when first seen
        return r
    if (unsafe := unsafe_image_id(iid)) is not None:
        bad_ids.append({"file": path.name, "line": line, "image_id": iid, "reason": unsafe})
        return None
    return readings.setdefault(iid, Readings())


def _box_columns(path: Path, required: tuple[str, ...]) -> tuple[dict[str, list[str]], np.ndarray]:
    """A box csv as stripped text columns and its ``[N, 4]`` float64 boxes (NaN where a cell is
    not a finite number), read by pandas' C parser: the Kaggle csv's 67,914 rows in a fraction of
    the csv module's time. Coordinate columns are kept as text too where some cell is not a
    finite number (for the report). ``ValueError`` naming the file if a column is missing."""
    import pandas as pd

    def read(**kwargs):
        try:
            df = pd.read_csv(path, keep_default_na=False, encoding="utf-8-sig", **kwargs)
        except pd.errors.EmptyDataError:
            df = pd.DataFrame()
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
        df.columns = header = [str(c).strip() for c in df.columns]
        if missing := [c for c in required if c not in header]:
            raise ValueError(f"{path}: missing column(s) {missing} (header: {header})")
        return df

    text = [c for c in required if c not in BOX_COLUMNS]
    try:  # every coordinate a number or empty: parsed as floats directly
        df = read(dtype={**dict.fromkeys(text, str), **dict.fromkeys(BOX_COLUMNS, "float64")},
                  na_values={c: [""] for c in BOX_COLUMNS})
        cols = {c: [v.strip() for v in df[c].tolist()] for c in text}
        boxes = df[list(BOX_COLUMNS)].to_numpy(dtype=np.float64) if len(df) else np.zeros((0, 4))
        drawn = np.array(cols["class_name"], dtype=object) != NO_FINDING  # "No finding" rows have no box
        if np.isfinite(boxes[drawn]).all():
            return cols, boxes
    except ValueError:
        pass
    df = read(dtype=str)  # some cell is not a finite number: read as text, such cells become NaN
    boxes = np.stack([_finite(df[c]) for c in BOX_COLUMNS], axis=1) if len(df) else np.zeros((0, 4))
    return {c: [v.strip() for v in df[c].tolist()] for c in required}, boxes


def _finite(column) -> np.ndarray:
    """A text column -> float64, NaN where a cell is not a finite number."""
    import pandas as pd

    values = np.array(pd.to_numeric(column.str.strip(), errors="coerce"), dtype=np.float64)
    values[~np.isfinite(values)] = np.nan
    return values


_KAGGLE_ID_TEXT = {name: str(i) for name, i in KAGGLE_CLASS_ID.items()} | {NO_FINDING: str(KAGGLE_NO_FINDING_ID)}


def _add_box_rows(readings: dict[str, Readings], bad_ids: list[dict], path: Path, kaggle: bool) -> int:
    """Box csv rows -> ``readings`` (PhysioNet annotations_*.csv or Kaggle train.csv); returns the
    number of rows. Line numbers count the header as line 1."""
    cols, boxes = _box_columns(path, KAGGLE_COLUMNS if kaggle else ANNOTATION_COLUMNS)
    n = len(boxes)
    finite = (~np.isnan(boxes).any(axis=1)).tolist()
    boxes_list = boxes.tolist()
    class_ids = cols["class_id"] if kaggle else [""] * n
    name_of_file = path.name
    for k, (iid, rad, name, class_id) in enumerate(zip(cols["image_id"], cols["rad_id"], cols["class_name"],
                                                      class_ids, strict=True)):
        if (r := readings.get(iid)) is None and (r := _reading(readings, bad_ids, path, k + 2, iid)) is None:
            continue
        if kaggle and class_id != _KAGGLE_ID_TEXT.get(name):
            if name not in _KAGGLE_ID_TEXT:
                r.problems.append(f"{name_of_file}, line {k + 2}: unknown class_name {name!r}")
            else:
                r.problems.append(f"{name_of_file}, line {k + 2}: class_id {class_id!r} does not match "
                                  f"class_name {name!r} (expected {_KAGGLE_ID_TEXT[name]})")
            continue
        if name == NO_FINDING:
            r.no_finding.add(rad)
            continue
        if name not in LOCAL_INDEX:
            r.problems.append(f"{name_of_file}, line {k + 2}: unknown class_name {name!r}")
            continue
        if not finite[k]:
            bad = ", ".join(f"{c}={cols[c][k]!r}" for j, c in enumerate(BOX_COLUMNS) if np.isnan(boxes[k, j]))
            r.problems.append(f"{name_of_file}, line {k + 2}: {bad} is not a finite number")
            continue
        x1, y1, x2, y2 = boxes_list[k]
        if x1 > x2 or y1 > y2:  # inverted corners: the same rectangle, drawn from another corner
            r.swapped += 1
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        r.boxes.setdefault(name, []).append((x1, y1, x2, y2))
        r.box_readers.setdefault(name, []).append(rad)
        r.drawers.add(rad)
    return n


@_without_gc
def parse_physionet(root: str | PathLike, split: str) -> Labels:
    """Read ``annotations_{split}.csv`` and ``image_labels_{split}.csv`` (PhysioNet 1.0.0)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ann_path = Path(root) / annotations_csv(split)
    lab_path = Path(root) / image_labels_csv(split)
    readings: dict[str, Readings] = {}
    bad_ids: list[dict] = []
    box_rows = _add_box_rows(readings, bad_ids, ann_path, kaggle=False)

    lab_header, lab_rows = _read_csv(lab_path, ("image_id",))
    columns = _global_columns(lab_header, lab_path)
    local_columns = [c for c in lab_header if c in LOCAL_INDEX]
    with_local = 0
    for line, row in lab_rows:
        if (r := _reading(readings, bad_ids, lab_path, line, _cell(row, "image_id"))) is None:
            continue
        if r.global_labels is None:
            r.global_labels = set()
        try:
            positive = {g for g, c in columns.items() if _flag(row[c], lab_path, line, c)}
            local = [c for c in local_columns if _flag(row[c], lab_path, line, c)]
        except ValueError as e:
            r.problems.append(str(e).replace(str(lab_path), lab_path.name))
            continue
        r.global_labels.update(positive)
        with_local += bool(local)
        rad = _cell(row, "rad_id")
        if local or positive - {NO_FINDING}:
            r.labellers.add(rad)
        elif NO_FINDING in positive:
            r.label_no_finding.add(rad)
    if not box_rows and with_local:
        raise ValueError(f"{ann_path}: no box rows, but {lab_path.name} gives local findings on "
                         f"{with_local} rows: the box csv looks truncated (every image would be 'No finding')")
    # the test split is "labeled by the consensus of 5 radiologists" (the PhysioNet page)
    return Labels(split, readings, has_global=True, bad_ids=bad_ids, consensus=split == "test")


@_without_gc
def parse_kaggle(root: str | PathLike) -> Labels:
    """Read the Kaggle VinBigData ``train.csv`` (the only labelled split)."""
    path = Path(root) / KAGGLE_CSV
    readings: dict[str, Readings] = {}
    bad_ids: list[dict] = []
    _add_box_rows(readings, bad_ids, path, kaggle=True)
    return Labels("train", readings, has_global=False, bad_ids=bad_ids)


def parse_labels(root: str | PathLike, split: str, layout: str = "physionet") -> Labels:
    """:func:`parse_physionet` or :func:`parse_kaggle` by ``layout``."""
    if layout == "physionet":
        return parse_physionet(root, split)
    if layout == "kaggle":
        if split != "train":
            raise ValueError(f"the Kaggle layout has labels for the train split only, not {split!r}")
        return parse_kaggle(root)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _global_answer(r: Readings) -> list[str]:
    pos = r.global_labels or set()
    if pos - {NO_FINDING}:
        pos = pos - {NO_FINDING}
    return sorted(pos, key=GLOBAL_INDEX.__getitem__) or [NO_FINDING]


#: ``label_fusion`` values (module docstring)
LABEL_FUSIONS = ("dedup", "wbf", "none")
DEDUP_MODES = ("medoid", "mean")
#: ``fusion_conf_type``: the ensemble_boxes conf types whose score is reader agreement
FUSION_CONF_TYPES = ("avg", "box_and_model_avg")
COORD_DECIMALS = 3  # wbf boxes in pixels: ensemble_boxes averages in float32 (1e-4 px on a 3000 px film)


def fusion_settings(label_fusion: str = "dedup", dedup_iou: float = 0.5, dedup_mode: str = "medoid",
                    fusion_iou: float = 0.5, fusion_conf_type: str = "avg",
                    min_votes: int | None = None) -> dict:
    """The label-fusion settings by their config key (``data.<key>``); ``ValueError`` naming
    every wrong one."""
    def real(v) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    problems = []
    if label_fusion not in LABEL_FUSIONS:
        problems.append(f"label_fusion={label_fusion!r}: must be one of {', '.join(LABEL_FUSIONS)}")
    if dedup_mode not in DEDUP_MODES:
        problems.append(f"dedup_mode={dedup_mode!r}: must be one of {', '.join(DEDUP_MODES)}")
    for key, v in (("dedup_iou", dedup_iou), ("fusion_iou", fusion_iou)):
        if not (real(v) and 0 <= v < 1):
            problems.append(f"{key}={v!r}: must be a number in [0, 1)")
    if fusion_conf_type not in FUSION_CONF_TYPES:
        problems.append(f"fusion_conf_type={fusion_conf_type!r}: must be one of {', '.join(FUSION_CONF_TYPES)}")
    if min_votes is not None and not (isinstance(min_votes, int) and not isinstance(min_votes, bool)
                                      and min_votes >= 1):
        problems.append(f"min_votes={min_votes!r}: must be an integer >= 1 or null")
    if problems:
        raise ValueError("label fusion settings: " + "; ".join(problems))
    return {"label_fusion": label_fusion, "dedup_iou": dedup_iou, "dedup_mode": dedup_mode,
            "fusion_iou": fusion_iou, "fusion_conf_type": fusion_conf_type, "min_votes": min_votes}


#: the settings of each method that change its labels
FUSION_KEYS = {"dedup": ("dedup_iou", "dedup_mode"), "wbf": ("fusion_iou", "fusion_conf_type", "min_votes"),
               "none": ()}


def label_settings(settings: dict) -> dict:
    """The part of :func:`fusion_settings` that the labels depend on: ``label_fusion`` and its
    method's keys (a cache written before ``label_fusion`` existed is ``dedup``)."""
    method = settings.get("label_fusion", "dedup")
    return {"label_fusion": method, **{k: settings[k] for k in FUSION_KEYS.get(method, ()) if k in settings}}


def wbf_findings(boxes: list[tuple[str, str, Box]], readers: list[str], width: float, height: float,
                 iou_thr: float = 0.5, conf_type: str = "avg") -> list[tuple[str, Box, float]]:
    """``ensemble_boxes.weighted_boxes_fusion`` of one image's ``(reader, class, pixel box)``
    triples: each of ``readers`` (those who drew on the image, some perhaps with no box inside
    it) is one model with score 1 per box, boxes are normalised by ``width`` / ``height``, labels
    are :data:`~medgrounder.core.labels.LOCAL_INDEX`. Returns ``(class, pixel box, agreement)``
    sorted by (label index, box), coordinates rounded to :data:`COORD_DECIMALS`. Inputs are
    sorted first (readers, then each reader's (label, box)), so the result does not depend on
    row order."""
    from ensemble_boxes import weighted_boxes_fusion

    readers = sorted(set(readers))
    per = {rad: [] for rad in readers}
    for rad, name, b in sorted(boxes):
        per[rad].append((LOCAL_INDEX[name], b))
    for rad in per:
        per[rad].sort()
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes_list = [np.array([b for _, b in per[rad]], dtype=np.float64).reshape(-1, 4) / scale for rad in readers]
    scores_list = [np.ones(len(per[rad])) for rad in readers]
    labels_list = [np.array([k for k, _ in per[rad]], dtype=np.int64) for rad in readers]
    fused, scores, labels = weighted_boxes_fusion(boxes_list, scores_list, labels_list, iou_thr=iou_thr,
                                                  skip_box_thr=0.0, conf_type=conf_type)
    out = [(LOCAL_LABELS[int(k)], tuple(round(float(v), COORD_DECIMALS) for v in b * scale), float(sc))
           for b, sc, k in zip(fused, scores.tolist(), labels.tolist(), strict=True)]
    out.sort(key=lambda f: (LOCAL_INDEX[f[0]], f[1], f[2]))
    return out  # type: ignore[return-value]


def _by_class(counts: dict[str, int]) -> dict[str, int]:
    return {n: counts[n] for n in sorted(counts, key=LOCAL_INDEX.__getitem__) if counts[n]}


@_without_gc
def build_records(labels: Labels, sizes: Mapping[str, tuple[int, int]], paths: Mapping[str, str],
                  dedup_iou: float = 0.5, dedup_mode: str = "medoid", *, label_fusion: str = "dedup",
                  fusion_iou: float = 0.5, fusion_conf_type: str = "avg",
                  min_votes: int | None = None) -> tuple[list[VinDrRecord], dict]:
    """Records, sorted by ``image_id``, of the conflict-free images that have a size.

    ``sizes`` maps image id -> ``(width, height)`` from the DICOM header; images without one
    (missing or unreadable files: the caller reports them) are left out. Boxes are clipped to
    the image (dropped when no area is left), then fused per class by ``label_fusion`` (module
    docstring). Report keys:
    ``split``, ``images``, ``removed_conflicts`` / ``removed_ids`` (of which
    ``removed_label_conflicts`` from the label csv alone), ``removed_bad_rows`` / ``bad_rows``
    (id -> reasons), ``invalid_ids`` (rows skipped for an unsafe id),
    ``removed_no_box_inside`` (ids), ``removed_below_min_votes`` (ids: no fused box reached
    ``min_votes``), ``boxes_raw`` / ``boxes_dedup`` (after fusion, whatever the method) /
    ``boxes_clipped`` / ``boxes_swapped`` / ``boxes_outside`` (of the returned images),
    ``boxes_raw_by_class`` / ``boxes_by_class`` (drawn / after fusion, by class),
    ``label_fusion`` (configured), ``fusion_applied`` (the method used on this split),
    ``fusion_skipped`` (why not, or ``None``), ``max_readers`` (per image),
    ``no_finding_images`` and, with global labels, ``missing_labels`` (images absent from the
    label csv).
    """
    settings = fusion_settings(label_fusion, dedup_iou, dedup_mode, fusion_iou, fusion_conf_type, min_votes)
    method, skipped = label_fusion, None
    if method == "wbf" and not labels.multi_reader:  # one reading per image: nothing to fuse
        method = "none"
        skipped = ("a consensus split (one reading per image): boxes kept as drawn" if labels.consensus
                   else "at most one reader per image: boxes kept as drawn")
    conflicts = labels.conflicts
    bad_rows = labels.bad_rows
    report = {"split": labels.split, "images": 0, "removed_conflicts": len(conflicts),
              "removed_label_conflicts": sum(not labels.readings[i].box_conflict for i in conflicts),
              "removed_ids": conflicts, "removed_bad_rows": len(bad_rows), "bad_rows": bad_rows,
              "invalid_ids": labels.bad_ids, "removed_no_box_inside": [], "removed_below_min_votes": [],
              "boxes_raw": 0, "boxes_dedup": 0, "boxes_clipped": 0, "boxes_swapped": 0,
              "boxes_outside": 0, "no_finding_images": 0,
              "label_fusion": label_settings(settings), "fusion_applied": method, "fusion_skipped": skipped,
              "max_readers": labels.max_readers}
    if labels.has_global:
        report["missing_labels"] = 0
    records = []
    raw_n = clipped_n = outside_n = swapped_n = dedup_n = normal_n = missing_n = 0
    raw_by_class: dict[str, int] = dict.fromkeys(LOCAL_LABELS, 0)
    by_class: dict[str, int] = dict.fromkeys(LOCAL_LABELS, 0)
    for iid in labels.kept_ids():
        if iid not in sizes:
            continue
        width, height = sizes[iid]
        r = labels.readings[iid]
        findings = []
        agreement = None
        drawn = []  # (reader, class, clipped box): wbf's input
        for name, raw in r.boxes.items():
            raw_n += len(raw)
            raw_by_class[name] += len(raw)
            inside = []
            for k, b in enumerate(raw):
                if b[0] >= 0 and b[1] >= 0 and b[2] <= width and b[3] <= height:
                    c = b  # within the image, as almost every box
                else:
                    c = (max(0.0, min(b[0], width)), max(0.0, min(b[1], height)),
                         max(0.0, min(b[2], width)), max(0.0, min(b[3], height)))
                if c[2] > c[0] and c[3] > c[1]:
                    inside.append(c)
                    clipped_n += c != b
                    if method == "wbf":
                        drawn.append((r.box_readers[name][k], name, c))
                else:  # no area left inside the image: nothing to find
                    outside_n += 1
            if method == "dedup":
                findings += [(name, b) for b in dedup_boxes(inside, thr=dedup_iou, mode=dedup_mode)]
            elif method == "none":
                findings += [(name, b) for b in inside]
        if method == "wbf" and drawn:
            fused = wbf_findings(drawn, sorted(r.drawers), width, height, fusion_iou, fusion_conf_type)
            if min_votes is not None:
                fused = [f for f in fused if round(f[2] * len(r.drawers)) >= min_votes]
            if not fused:  # boxes inside, none agreed on by min_votes readers: not a normal image
                report["removed_below_min_votes"].append(iid)
                continue
            findings = [(n, b) for n, b, _ in fused]  # already sorted
            agreement = [a for _, _, a in fused]
        if r.drawers and not findings:  # its readers drew boxes, none usable: not a normal image
            report["removed_no_box_inside"].append(iid)
            continue
        swapped_n += r.swapped
        if len(findings) > 1 and agreement is None:
            findings.sort(key=lambda f: (LOCAL_INDEX[f[0]], f[1]))
        dedup_n += len(findings)
        for name, _ in findings:
            by_class[name] += 1
        normal_n += not findings
        global_labels, no_finding = [], None
        if labels.has_global:
            missing_n += r.global_labels is None
            global_labels = _global_answer(r)
            no_finding = NO_FINDING in (r.global_labels or ())
        records.append(VinDrRecord(iid, labels.split, paths[iid], width, height, findings, global_labels,
                                   no_finding=no_finding, agreement=agreement))
    report.update(boxes_raw=raw_n, boxes_clipped=clipped_n, boxes_outside=outside_n, boxes_swapped=swapped_n,
                  boxes_dedup=dedup_n, no_finding_images=normal_n, boxes_raw_by_class=_by_class(raw_by_class),
                  boxes_by_class=_by_class(by_class))
    if labels.has_global:
        report["missing_labels"] = missing_n
    report["images"] = len(records)
    return records, report


def read_sizes(root: str | PathLike, split: str, image_ids: list[str]
               ) -> tuple[dict[str, tuple[int, int]], list[str], dict[str, str]]:
    """DICOM header sizes of ``image_ids``: ``(sizes, missing ids, {unreadable id: reason})``."""
    sizes, missing, unreadable = {}, [], {}
    for iid in image_ids:
        path = dicom_path(root, split, iid)
        if not path.is_file():
            missing.append(iid)
            continue
        try:
            sizes[iid] = read_dicom_size(path)
        except DicomReadError as e:
            unreadable[iid] = e.reason
    return sizes, missing, unreadable


def load_vindr(root: str | PathLike, split: str, layout: str = "physionet", dedup_iou: float = 0.5,
               dedup_mode: str = "medoid", **fusion) -> tuple[list[VinDrRecord], dict]:
    """Records of one split sorted by ``image_id``, and a report (:func:`build_records`'s keys
    plus ``missing_files`` / ``unreadable_files``: image ids skipped for no DICOM / a bad one,
    with ``unreadable_reasons`` by id). ``fusion``: :func:`build_records`'s ``label_fusion``,
    ``fusion_iou``, ``fusion_conf_type``, ``min_votes``."""
    fusion_settings(dedup_iou=dedup_iou, dedup_mode=dedup_mode, **fusion)  # before any file is read
    labels = parse_labels(root, split, layout)
    ids = labels.kept_ids()
    sizes, missing, unreadable = read_sizes(root, split, ids)
    paths = {i: str(dicom_path(root, split, i)) for i in sizes}
    records, report = build_records(labels, sizes, paths, dedup_iou, dedup_mode, **fusion)
    report["missing_files"] = missing
    report["unreadable_files"] = sorted(unreadable)
    report["unreadable_reasons"] = dict(sorted(unreadable.items()))
    return records, report


def load_vindr_physionet(root: str | PathLike, split: str, dedup_iou: float = 0.5,
                         dedup_mode: str = "medoid", **fusion) -> tuple[list[VinDrRecord], dict]:
    """PhysioNet 1.0.0 layout: :func:`load_vindr` for ``split`` in ``train | test``."""
    return load_vindr(root, split, "physionet", dedup_iou, dedup_mode, **fusion)


def load_vindr_kaggle(root: str | PathLike, dedup_iou: float = 0.5,
                      dedup_mode: str = "medoid", **fusion) -> tuple[list[VinDrRecord], dict]:
    """Kaggle VinBigData layout: :func:`load_vindr` of the labelled train split."""
    return load_vindr(root, "train", "kaggle", dedup_iou, dedup_mode, **fusion)
