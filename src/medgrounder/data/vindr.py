"""VinDr-CXR, PhysioNet 1.0.0 layout: csv annotations + DICOM files -> one record per image.

Layout (design section 5)::

    annotations/annotations_{train,test}.csv    image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    annotations/image_labels_{train,test}.csv   image_id,rad_id,<22 local>,<6 global> (0/1)
    {train,test}/<image_id>.dicom

Local findings come from the box csv, merged across and within readers per (image, class) with
:func:`~medgrounder.data.boxes.dedup_boxes`; global labels are the union over the readers'
rows of the label csv. Images where one reader says "No finding" while another draws a box
are removed and reported. The result does not depend on row order or ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from medgrounder.data.boxes import Box, dedup_boxes
from medgrounder.data.dicom import DicomReadError, read_dicom_size
from medgrounder.data.labels import (
    GLOBAL_INDEX,
    GLOBAL_LABELS,
    LOCAL_INDEX,
    NO_FINDING,
    canonical_global,
)

SPLITS = ("train", "test")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
ANNOTATION_COLUMNS = ("image_id", "rad_id", "class_name", *BOX_COLUMNS)


@dataclass
class VinDrRecord:
    image_id: str
    split: str  # "train" | "test"
    path: str  # the DICOM file
    width: int  # original size from the DICOM header (Columns)
    height: int  # (Rows)
    findings: list[tuple[str, Box]]  # deduplicated pixel boxes, sorted by (label index, box)
    global_labels: list[str]  # canonical GLOBAL_LABELS in label order; ["No finding"] when none


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


def load_vindr_physionet(root: str | PathLike, split: str, dedup_iou: float = 0.5,
                         dedup_mode: str = "medoid") -> tuple[list[VinDrRecord], dict]:
    """Records of one split sorted by ``image_id``, and a report.

    Report keys: ``split``, ``images`` (records returned), ``removed_conflicts`` /
    ``removed_ids`` (reader conflicts), ``boxes_raw`` / ``boxes_dedup`` (boxes of the returned
    images before / after de-duplication), ``boxes_clipped`` (boxes clipped to the image),
    ``missing_files`` / ``unreadable_files`` (image ids skipped: no DICOM / bad DICOM),
    ``no_finding_images``, ``missing_labels`` (images absent from the label csv).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    ann_path = root / "annotations" / f"annotations_{split}.csv"
    lab_path = root / "annotations" / f"image_labels_{split}.csv"

    _, ann_rows = _read_csv(ann_path, ANNOTATION_COLUMNS)
    boxes: dict[str, dict[str, list[Box]]] = {}
    drawers: dict[str, set[str]] = {}
    no_finding: dict[str, set[str]] = {}
    for line, row in ann_rows:
        iid, rad, name = (_cell(row, c) for c in ("image_id", "rad_id", "class_name"))
        boxes.setdefault(iid, {})
        if name == NO_FINDING:
            no_finding.setdefault(iid, set()).add(rad)
            continue
        if name not in LOCAL_INDEX:
            raise ValueError(f"{ann_path}, line {line}: unknown class_name {name!r}")
        box = tuple(_coord(row[c], ann_path, line, c) for c in BOX_COLUMNS)
        boxes[iid].setdefault(name, []).append(box)  # type: ignore[arg-type]
        drawers.setdefault(iid, set()).add(rad)

    lab_header, lab_rows = _read_csv(lab_path, ("image_id",))
    columns = _global_columns(lab_header, lab_path)
    positives: dict[str, set[str]] = {}
    for line, row in lab_rows:
        pos = positives.setdefault(_cell(row, "image_id"), set())
        pos.update(g for g, c in columns.items() if _flag(row[c], lab_path, line, c))

    image_ids = sorted(boxes.keys() | positives.keys())
    conflicts = [i for i in image_ids if no_finding.get(i) and drawers.get(i)]
    report = {"split": split, "images": 0, "removed_conflicts": len(conflicts),
              "removed_ids": conflicts, "boxes_raw": 0, "boxes_dedup": 0, "boxes_clipped": 0,
              "missing_files": [], "unreadable_files": [], "no_finding_images": 0,
              "missing_labels": 0}
    removed = set(conflicts)
    records = []
    for iid in image_ids:
        if iid in removed:
            continue
        path = root / split / f"{iid}.dicom"
        if not path.is_file():
            report["missing_files"].append(iid)
            continue
        try:
            width, height = read_dicom_size(path)
        except DicomReadError:
            report["unreadable_files"].append(iid)
            continue
        findings = []
        for name, raw in boxes.get(iid, {}).items():
            report["boxes_raw"] += len(raw)
            clipped = [(max(0.0, min(b[0], width)), max(0.0, min(b[1], height)),
                        max(0.0, min(b[2], width)), max(0.0, min(b[3], height))) for b in raw]
            report["boxes_clipped"] += sum(c != b for c, b in zip(clipped, raw, strict=True))
            findings += [(name, b) for b in dedup_boxes(clipped, thr=dedup_iou, mode=dedup_mode)]
        findings.sort(key=lambda f: (LOCAL_INDEX[f[0]], f[1]))
        report["boxes_dedup"] += len(findings)
        if iid not in positives:
            report["missing_labels"] += 1
        pos = positives.get(iid, set())
        if pos - {NO_FINDING}:
            pos = pos - {NO_FINDING}
        global_labels = sorted(pos, key=GLOBAL_INDEX.__getitem__) or [NO_FINDING]
        report["no_finding_images"] += not findings
        records.append(VinDrRecord(iid, split, str(path), width, height, findings, global_labels))
    report["images"] = len(records)
    return records, report
