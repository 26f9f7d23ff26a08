"""Hostile VinDr label csv files: every bad box or row is repaired or dropped by the rule of
``data/vindr/records.py`` and counted in the report; nothing becomes a silently wrong finding."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medgrounder.core.labels import LOCAL_LABELS
from medgrounder.data.vindr.layout import unsafe_image_id
from medgrounder.data.vindr.prepared import prepare_vindr
from medgrounder.data.vindr.records import load_vindr_physionet
from test_prepare import _tiny_dicom

GLOBAL_COLUMNS = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
BOX_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]


def _write(root: Path, boxes: list[tuple], labels: list[tuple], split: str = "train", size=(100, 80)) -> None:
    """A PhysioNet root: box rows, label rows ``(image_id, rad_id, {label: 1})``, a DICOM per id."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for s in ("train", "test"):
        with open(root / "annotations" / f"annotations_{s}.csv", "w", newline="") as f:
            csv.writer(f).writerows([BOX_HEADER, *(boxes if s == split else [])])
        with open(root / "annotations" / f"image_labels_{s}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "rad_id", *LOCAL_LABELS, *GLOBAL_COLUMNS])
            for iid, rad, pos in labels if s == split else []:
                w.writerow([iid, rad, *(int(c in pos) for c in (*LOCAL_LABELS, *GLOBAL_COLUMNS))])
    for iid in {row[0] for row in boxes} | {row[0] for row in labels}:
        if unsafe_image_id(iid) is None:
            _tiny_dicom(root / split / f"{iid}.dicom", *size)


def _labels_for(boxes):
    return [(b[0], b[1], {b[2]} if b[2] != "No finding" else {"No finding"}) for b in boxes]


def test_inverted_corners_are_swapped_and_counted(tmp_path):
    boxes = [("a", "R1", "Nodule/Mass", 40, 30, 10, 5), ("b", "R1", "Nodule/Mass", 10, 5, 40, 30)]
    _write(tmp_path, boxes, _labels_for(boxes))
    records, report = load_vindr_physionet(tmp_path, "train")
    by_id = {r.image_id: r for r in records}
    assert by_id["a"].findings == by_id["b"].findings == [("Nodule/Mass", (10.0, 5.0, 40.0, 30.0))]
    assert report["boxes_swapped"] == 1


def test_an_inverted_box_no_longer_doubles_its_finding(tmp_path):
    # Two readers draw the same box, one from the other corner: one finding after de-duplication.
    boxes = [("a", "R1", "Nodule/Mass", 10, 5, 40, 30), ("a", "R2", "Nodule/Mass", 40, 30, 10, 5)]
    _write(tmp_path, boxes, _labels_for(boxes))
    (record,), _ = load_vindr_physionet(tmp_path, "train")
    assert record.findings == [("Nodule/Mass", (10.0, 5.0, 40.0, 30.0))]


@pytest.mark.parametrize("cell", ["nan", "NaN", "inf", "", "abc"])
def test_a_coordinate_that_is_not_a_finite_number_removes_its_image(tmp_path, cell):
    boxes = [("a", "R1", "Nodule/Mass", 10, cell, 40, 30), ("b", "R1", "Nodule/Mass", 10, 5, 40, 30)]
    _write(tmp_path, boxes, _labels_for(boxes))
    records, report = load_vindr_physionet(tmp_path, "train")
    assert [r.image_id for r in records] == ["b"]  # "a" never becomes a box at y = 0 or "No finding"
    assert report["bad_rows"] == {"a": [f"annotations_train.csv, line 2: y_min={cell!r} is not a finite number"]}
    assert report["removed_bad_rows"] == 1


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(tmp_path):
    boxes = [("a", "R1", "Nodule/Mass", 90, 70, 130, 95),  # partly outside (image 100 x 80): clipped
             ("a", "R1", "Aortic enlargement", 120, 10, 150, 40),  # wholly outside: dropped
             ("b", "R1", "Nodule/Mass", 200, 200, 300, 300)]  # b's only box is outside: b removed
    _write(tmp_path, boxes, _labels_for(boxes))
    records, report = load_vindr_physionet(tmp_path, "train")
    assert [(r.image_id, r.findings) for r in records] == [("a", [("Nodule/Mass", (90.0, 70.0, 100.0, 80.0))])]
    assert report["boxes_clipped"] == 1 and report["boxes_outside"] == 2
    assert report["removed_no_box_inside"] == ["b"]


@pytest.mark.parametrize("iid", ["../outside", "a/b", "..", ".hidden", "a\\b", "", "a\tb"])
def test_an_image_id_that_is_not_a_plain_name_is_skipped_and_reported(tmp_path, iid):
    boxes = [(iid, "R1", "Nodule/Mass", 10, 5, 40, 30), ("b", "R1", "Nodule/Mass", 10, 5, 40, 30)]
    _write(tmp_path, boxes, _labels_for(boxes))
    (tmp_path / "outside.dicom").write_bytes((tmp_path / "train" / "b.dicom").read_bytes())
    records, report = load_vindr_physionet(tmp_path, "train")
    assert [r.image_id for r in records] == ["b"]
    skipped = report["invalid_ids"]
    assert {(s["file"], s["line"], s["image_id"]) for s in skipped} == {
        ("annotations_train.csv", 2, iid), ("image_labels_train.csv", 2, iid)}
    out = tmp_path / "prepared"
    prepare_vindr(tmp_path, out, size=32)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["images/train/b.png"]
    full = json.loads((out / "report.json").read_text())
    assert full["invalid_ids"] == [{"split": "train", **s} for s in skipped]


def test_an_empty_box_csv_contradicted_by_the_label_csv_is_refused(tmp_path):
    boxes = [("a", "R1", "Nodule/Mass", 10, 5, 40, 30), ("b", "R1", "No finding", "", "", "", "")]
    _write(tmp_path, boxes, _labels_for(boxes))
    box_csv = tmp_path / "annotations" / "annotations_train.csv"
    box_csv.write_text(",".join(BOX_HEADER) + "\n")  # a header and no rows
    with pytest.raises(ValueError, match=r"annotations_train\.csv: no box rows, but image_labels_train\.csv "
                                         r"gives local findings on 1 rows"):
        load_vindr_physionet(tmp_path, "train")
    # Without local findings in the label csv an empty box csv is a set of normal images.
    _write(tmp_path, [], [("b", "R1", {"No finding"})])
    records, _ = load_vindr_physionet(tmp_path, "train")
    assert [(r.image_id, r.findings, r.global_labels) for r in records] == [("b", [], ["No finding"])]


def test_reader_conflicts_in_the_label_csv_are_removed_and_counted(tmp_path):
    # c: R1 says only "No finding" in the label csv, R2 gives Pneumonia (no boxes anywhere).
    boxes = [("a", "R1", "Nodule/Mass", 10, 5, 40, 30), ("a", "R2", "Nodule/Mass", 11, 5, 40, 30),
             ("c", "R1", "No finding", "", "", "", ""), ("c", "R2", "No finding", "", "", "", "")]
    labels = [("a", "R1", {"Nodule/Mass"}), ("a", "R2", {"Nodule/Mass", "Lung tumor"}),
              ("c", "R1", {"No finding"}), ("c", "R2", {"Pneumonia"})]
    _write(tmp_path, boxes, labels)
    records, report = load_vindr_physionet(tmp_path, "train")
    assert [r.image_id for r in records] == ["a"]
    assert report["removed_ids"] == ["c"] and report["removed_conflicts"] == report["removed_label_conflicts"] == 1


def test_a_csv_that_is_not_utf8_is_named(tmp_path):
    boxes = [("a", "R1", "Nodule/Mass", 10, 5, 40, 30)]
    _write(tmp_path, boxes, _labels_for(boxes))
    for name in ("annotations_train.csv", "image_labels_train.csv"):
        path = tmp_path / "annotations" / name
        good = path.read_bytes()
        path.write_bytes(good.replace(b"R1", b"R\xe9", 1))
        with pytest.raises(ValueError, match=rf"{name}.*(UTF-8|utf-8)"):
            load_vindr_physionet(tmp_path, "train")
        path.write_bytes(good)
