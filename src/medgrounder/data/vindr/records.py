"""VinDr-CXR labels: csv annotations + DICOM headers -> one record per image.

The files are those of :mod:`medgrounder.data.vindr.layout` (PhysioNet 1.0.0 or Kaggle
VinBigData). Kaggle's ``train.csv`` has the 14 classes of
:data:`~medgrounder.core.labels.KAGGLE_CLASSES` and "No finding" = 14 with empty boxes, no global
labels (records get ``global_labels == []``) and no labelled test split.

Label building is split in two so ``prepare`` can take image sizes from its decoding workers:
:func:`parse_physionet` / :func:`parse_kaggle` read the csv files into per-image
:class:`Readings` (no image I/O), :func:`build_records` clips boxes to the image, merges them
across and within readers per (image, class) with :func:`~medgrounder.core.boxes.dedup_boxes`
and removes images where one reader says "No finding" while another draws a box. Global labels
are the union over the readers' rows of the label csv. The result does not depend on row order
or ``PYTHONHASHSEED``: every set is sorted before it is used.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from medgrounder.core.boxes import Box, dedup_boxes
from medgrounder.core.labels import (
    GLOBAL_INDEX,
    GLOBAL_LABELS,
    KAGGLE_CLASS_ID,
    KAGGLE_NO_FINDING_ID,
    LOCAL_INDEX,
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
)


@dataclass
class VinDrRecord:
    image_id: str
    split: str  # "train" | "test"
    path: str  # the DICOM file
    width: int  # original size from the DICOM header (Columns)
    height: int  # (Rows)
    findings: list[tuple[str, Box]]  # deduplicated pixel boxes, sorted by (label index, box)
    global_labels: list[str]  # canonical GLOBAL_LABELS in label order; ["No finding"] when none;
    # [] when the layout has no global labels (Kaggle)
    image: str | None = None  # the resized cache image, for records read from prepared output
    # the label csv's "No finding" column (any reader); None without a label csv (Kaggle) or
    # from a prepared cache written before it was kept. LiteGPT's binary truth is 1 - this column.
    no_finding: bool | None = None


@dataclass
class Readings:
    """What the readers said about one image, before clipping and de-duplication."""

    boxes: dict[str, list[Box]] = field(default_factory=dict)  # class -> boxes of all readers
    drawers: set[str] = field(default_factory=set)  # readers who drew a box
    no_finding: set[str] = field(default_factory=set)  # readers who said "No finding"
    global_labels: set[str] | None = None  # union over readers; None when not in the label csv

    @property
    def conflict(self) -> bool:
        return bool(self.drawers and self.no_finding)


@dataclass
class Labels:
    """The parsed csv files of one split: ``readings`` by image id."""

    split: str
    readings: dict[str, Readings]
    has_global: bool  # the layout has image-level labels (PhysioNet)

    @property
    def conflicts(self) -> list[str]:
        return sorted(i for i, r in self.readings.items() if r.conflict)

    def kept_ids(self) -> list[str]:
        """Image ids without reader conflicts, sorted."""
        return sorted(i for i, r in self.readings.items() if not r.conflict)


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs; ``ValueError`` naming the file if a column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing} (header: {header})")
        rows = [(reader.line_num, row) for row in reader]
    return header, rows


def _cell(row: dict[str, str | None], column: str) -> str:
    return (row.get(column) or "").strip()


def _coord(value: str | None, path: Path, line: int, column: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}, line {line}: cannot parse {column}={value!r} as a number") from None


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


def _add_box_rows(readings: dict[str, Readings], path: Path, rows, kaggle: bool) -> None:
    """Box csv rows -> ``readings`` (PhysioNet annotations_*.csv or Kaggle train.csv)."""
    for line, row in rows:
        iid, rad, name = (_cell(row, c) for c in ("image_id", "rad_id", "class_name"))
        r = readings.get(iid)
        if r is None:
            r = readings[iid] = Readings()
        if kaggle:
            class_id = _cell(row, "class_id")
            expected = KAGGLE_NO_FINDING_ID if name == NO_FINDING else KAGGLE_CLASS_ID.get(name)
            if expected is None:
                raise ValueError(f"{path}, line {line}: unknown class_name {name!r}")
            if class_id != str(expected):
                raise ValueError(f"{path}, line {line}: class_id {class_id!r} does not match "
                                 f"class_name {name!r} (expected {expected})")
        if name == NO_FINDING:
            r.no_finding.add(rad)
            continue
        if name not in LOCAL_INDEX:
            raise ValueError(f"{path}, line {line}: unknown class_name {name!r}")
        box = tuple(_coord(row[c], path, line, c) for c in BOX_COLUMNS)
        r.boxes.setdefault(name, []).append(box)  # type: ignore[arg-type]
        r.drawers.add(rad)


def parse_physionet(root: str | PathLike, split: str) -> Labels:
    """Read ``annotations_{split}.csv`` and ``image_labels_{split}.csv`` (PhysioNet 1.0.0)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    ann_path = Path(root) / annotations_csv(split)
    lab_path = Path(root) / image_labels_csv(split)
    readings: dict[str, Readings] = {}
    _add_box_rows(readings, ann_path, _read_csv(ann_path, ANNOTATION_COLUMNS)[1], kaggle=False)

    lab_header, lab_rows = _read_csv(lab_path, ("image_id",))
    columns = _global_columns(lab_header, lab_path)
    for line, row in lab_rows:
        r = readings.setdefault(_cell(row, "image_id"), Readings())
        if r.global_labels is None:
            r.global_labels = set()
        r.global_labels.update(g for g, c in columns.items() if _flag(row[c], lab_path, line, c))
    return Labels(split, readings, has_global=True)


def parse_kaggle(root: str | PathLike) -> Labels:
    """Read the Kaggle VinBigData ``train.csv`` (the only labelled split)."""
    path = Path(root) / KAGGLE_CSV
    readings: dict[str, Readings] = {}
    _add_box_rows(readings, path, _read_csv(path, KAGGLE_COLUMNS)[1], kaggle=True)
    return Labels("train", readings, has_global=False)


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


def build_records(labels: Labels, sizes: Mapping[str, tuple[int, int]], paths: Mapping[str, str],
                  dedup_iou: float = 0.5, dedup_mode: str = "medoid") -> tuple[list[VinDrRecord], dict]:
    """Records, sorted by ``image_id``, of the conflict-free images that have a size.

    ``sizes`` maps image id -> ``(width, height)`` from the DICOM header; images without one
    (missing or unreadable files: the caller reports them) are left out. Boxes are clipped to
    the image, then de-duplicated per class. Report keys: ``split``, ``images``,
    ``removed_conflicts`` / ``removed_ids``, ``boxes_raw`` / ``boxes_dedup`` / ``boxes_clipped``
    (of the returned images), ``no_finding_images`` and, with global labels,
    ``missing_labels`` (images absent from the label csv).
    """
    conflicts = labels.conflicts
    report = {"split": labels.split, "images": 0, "removed_conflicts": len(conflicts),
              "removed_ids": conflicts, "boxes_raw": 0, "boxes_dedup": 0, "boxes_clipped": 0,
              "no_finding_images": 0}
    if labels.has_global:
        report["missing_labels"] = 0
    records = []
    for iid in labels.kept_ids():
        if iid not in sizes:
            continue
        width, height = sizes[iid]
        r = labels.readings[iid]
        findings = []
        for name, raw in r.boxes.items():
            report["boxes_raw"] += len(raw)
            clipped = [(max(0.0, min(b[0], width)), max(0.0, min(b[1], height)),
                        max(0.0, min(b[2], width)), max(0.0, min(b[3], height))) for b in raw]
            report["boxes_clipped"] += sum(c != b for c, b in zip(clipped, raw, strict=True))
            findings += [(name, b) for b in dedup_boxes(clipped, thr=dedup_iou, mode=dedup_mode)]
        findings.sort(key=lambda f: (LOCAL_INDEX[f[0]], f[1]))
        report["boxes_dedup"] += len(findings)
        report["no_finding_images"] += not findings
        global_labels, no_finding = [], None
        if labels.has_global:
            report["missing_labels"] += r.global_labels is None
            global_labels = _global_answer(r)
            no_finding = NO_FINDING in (r.global_labels or ())
        records.append(VinDrRecord(iid, labels.split, paths[iid], width, height, findings, global_labels,
                                   no_finding=no_finding))
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
               dedup_mode: str = "medoid") -> tuple[list[VinDrRecord], dict]:
    """Records of one split sorted by ``image_id``, and a report (:func:`build_records`'s keys
    plus ``missing_files`` / ``unreadable_files``: image ids skipped for no DICOM / a bad one,
    with ``unreadable_reasons`` by id)."""
    labels = parse_labels(root, split, layout)
    ids = labels.kept_ids()
    sizes, missing, unreadable = read_sizes(root, split, ids)
    paths = {i: str(dicom_path(root, split, i)) for i in sizes}
    records, report = build_records(labels, sizes, paths, dedup_iou, dedup_mode)
    report["missing_files"] = missing
    report["unreadable_files"] = sorted(unreadable)
    report["unreadable_reasons"] = dict(sorted(unreadable.items()))
    return records, report


def load_vindr_physionet(root: str | PathLike, split: str, dedup_iou: float = 0.5,
                         dedup_mode: str = "medoid") -> tuple[list[VinDrRecord], dict]:
    """PhysioNet 1.0.0 layout: :func:`load_vindr` for ``split`` in ``train | test``."""
    return load_vindr(root, split, "physionet", dedup_iou, dedup_mode)


def load_vindr_kaggle(root: str | PathLike, dedup_iou: float = 0.5,
                      dedup_mode: str = "medoid") -> tuple[list[VinDrRecord], dict]:
    """Kaggle VinBigData layout: :func:`load_vindr` of the labelled train split."""
    return load_vindr(root, "train", "kaggle", dedup_iou, dedup_mode)
