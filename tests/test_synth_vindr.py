import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.data.synthetic import APPEARANCE, SHAPE_FAMILY
from medgrounder.data.vindr.dicom import load_dicom_uint8
from medgrounder.data.vindr.records import load_vindr_physionet
from medgrounder.data.vindr.synth import global_labels_from_local, synth_vindr
from medgrounder.synth import main

N, SEED = 24, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("vindr")
    summary = synth_vindr(root, n=N, seed=SEED)
    return root, summary


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_summary_and_layout(synth):
    root, summary = synth
    assert summary["train"] + summary["test"] == N and summary["test"] == round(N * 0.2)
    assert len(list((root / "train").glob("*.dicom"))) == summary["train"]
    assert len(list((root / "test").glob("*.dicom"))) == summary["test"]
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "annotations_test.csv", "annotations_train.csv", "image_labels_test.csv", "image_labels_train.csv"]


def test_dicom_headers_and_variety(synth):
    root, _ = synth
    mono1, no_window, two_windows, shapes = 0, 0, 0, set()
    for path in sorted(root.glob("*/*.dicom")):
        raw = path.read_bytes()
        assert raw[:128] == b"\0" * 128 and raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
        assert ds.Modality == "DX" and len(path.stem) == 32 and int(path.stem, 16) >= 0
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 14, 16) and ds.HighBit == ds.BitsStored - 1
        assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
        assert 256 <= ds.Rows <= 512 and 256 <= ds.Columns <= 512
        assert ds.pixel_array.max() < 2**ds.BitsStored
        mono1 += ds.PhotometricInterpretation == "MONOCHROME1"
        no_window += "WindowCenter" not in ds
        two_windows += "WindowCenter" in ds and ds["WindowCenter"].VM == 2
        shapes.add((ds.Rows, ds.Columns))
        img = load_dicom_uint8(path)
        assert img.shape == (ds.Rows, ds.Columns) and img.std() > 10
    assert mono1 >= 1 and no_window >= 1 and two_windows >= 1 and len(shapes) > 10


def test_csv_headers_exact(synth):
    root, _ = synth
    ann = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max"
    local = ",".join(LOCAL_LABELS)
    expected = {
        "annotations_train.csv": ann,
        "annotations_test.csv": ann,
        "image_labels_train.csv": f"image_id,rad_id,{local},COPD,Lung tumor,Pneumonia,Tuberculosis,Other diseases,No finding",
        "image_labels_test.csv": f"image_id,rad_id,{local},COPD,Lung tumor,Pneumonia,Tuberculosis,Other disease,No finding",
    }
    for name, header in expected.items():
        assert (root / "annotations" / name).read_text().splitlines()[0] == header


def test_train_readers_and_conflicts_removed(synth):
    root, summary = synth
    rows = _rows(root / "annotations" / "annotations_train.csv")
    readers, no_finding, drawers = {}, {}, {}
    for r in rows:
        readers.setdefault(r["image_id"], set()).add(r["rad_id"])
        if r["class_name"] == "No finding":
            assert r["x_min"] == r["y_max"] == ""
            no_finding.setdefault(r["image_id"], set()).add(r["rad_id"])
        else:
            drawers.setdefault(r["image_id"], set()).add(r["rad_id"])
    assert all(len(v) == 3 and all(1 <= int(x[1:]) <= 17 for x in v) for v in readers.values())
    conflicts = sorted(i for i in readers if no_finding.get(i) and drawers.get(i))
    assert len(conflicts) == summary["reader_conflicts"] >= 1

    records, report = load_vindr_physionet(root, "train")
    assert report["removed_conflicts"] == len(conflicts) and report["removed_ids"] == conflicts
    assert report["images"] == len(records) == summary["train"] - len(conflicts)
    assert not {r.image_id for r in records} & set(conflicts)
    assert report["missing_files"] == []
    # Three readers per finding plus the duplicates collapse to one box each.
    assert report["boxes_raw"] == 3 * report["boxes_dedup"] + summary["duplicate_boxes"]
    labels = {r["image_id"]: r for r in _rows(root / "annotations" / "image_labels_train.csv")}
    for rec in records:
        assert rec.global_labels == global_labels_from_local(n for n, _ in rec.findings)
        assert labels[rec.image_id]["image_id"] == rec.image_id


@pytest.mark.parametrize("split", ["train", "test"])
def test_records_sorted_and_inside_image(synth, split):
    root, _ = synth
    records, _ = load_vindr_physionet(root, split)
    assert [r.image_id for r in records] == sorted(r.image_id for r in records)
    for rec in records:
        ds = pydicom.dcmread(rec.path, stop_before_pixels=True)
        assert (rec.width, rec.height) == (ds.Columns, ds.Rows) and rec.split == split
        assert rec.findings == sorted(rec.findings, key=lambda f: (LOCAL_LABELS.index(f[0]), f[1]))
        for name, (x1, y1, x2, y2) in rec.findings:
            assert name in APPEARANCE
            assert 0 <= x1 < x2 <= rec.width and 0 <= y1 < y2 <= rec.height
            # inside the central lung/mediastinum region (plus reader jitter)
            assert 0.08 * rec.width <= x1 and x2 <= 0.92 * rec.width


def test_test_split_global_labels_follow_rule(synth):
    root, _ = synth
    records, report = load_vindr_physionet(root, "test")
    assert report["removed_conflicts"] == 0 and report["boxes_raw"] == report["boxes_dedup"]
    labels = {r["image_id"]: r for r in _rows(root / "annotations" / "image_labels_test.csv")}
    assert any(r.findings for r in records) and any(not r.findings for r in records)
    for rec in records:
        names = [n for n, _ in rec.findings]
        assert rec.global_labels == global_labels_from_local(names)
        row = labels[rec.image_id]
        assert [int(row[n]) for n in LOCAL_LABELS] == [int(n in names) for n in LOCAL_LABELS]
        assert [g for g in GLOBAL_LABELS if row[g] == "1"] == rec.global_labels


def test_findings_are_visible(synth):
    """A finding changes its box: the windowed mean moves in the appearance's direction."""
    root, _ = synth
    records, _ = load_vindr_physionet(root, "test")
    checked = 0
    for rec in records:
        if len(rec.findings) != 1:
            continue
        name, (x1, y1, x2, y2) = rec.findings[0]
        shape, sign, _ = APPEARANCE[name]
        if shape not in ("rect", "ellipse", "diamond"):
            continue
        ds = pydicom.dcmread(rec.path)
        if "WindowCenter" not in ds:
            continue
        img = load_dicom_uint8(rec.path).astype(float)
        cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 6, (y2 - y1) / 6
        inner = img[int(cy - hh):int(cy + hh) + 1, int(cx - hw):int(cx + hw) + 1].mean()
        ring = np.concatenate([img[int(y1) - 4:int(y1) - 1, int(x1):int(x2)].ravel(),
                               img[int(y2) + 2:int(y2) + 5, int(x1):int(x2)].ravel()]).mean()
        assert sign * (inner - ring) > 20, name
        checked += 1
    assert checked >= 1


def test_every_class_has_its_own_sign_texture_and_shape_family():
    looks = [(sign, texture, SHAPE_FAMILY[shape]) for shape, sign, texture in APPEARANCE.values()]
    assert sorted(APPEARANCE) == sorted(LOCAL_LABELS) and len(set(looks)) == len(looks)


def test_global_rule():
    assert global_labels_from_local([]) == ["No finding"]
    assert global_labels_from_local(["Nodule/Mass", "Emphysema", "Cardiomegaly"]) == [
        "COPD", "Lung tumor", "Other disease"]
    assert global_labels_from_local(["Lung Opacity", "Infiltration", "Lung cavity"]) == [
        "Pneumonia", "Tuberculosis"]
    with pytest.raises(ValueError):
        global_labels_from_local(["Fracture"])
    assert len(APPEARANCE) == len(set(APPEARANCE.values())) == len(LOCAL_LABELS)


def test_same_seed_byte_identical_any_workers(synth, tmp_path):
    root, _ = synth
    synth_vindr(tmp_path / "again", n=N, seed=SEED, workers=2)
    assert _files(tmp_path / "again") == _files(root)
    synth_vindr(tmp_path / "other", n=4, seed=SEED + 1)
    assert not set(_files(tmp_path / "other")) & {k for k in _files(root) if k.endswith(".dicom")}


def test_cli(tmp_path, capsys):
    summary = main(["vindr", "--out", str(tmp_path / "cli"), "--n", "3", "--seed", "1", "--max-side", "300"])
    assert summary["train"] + summary["test"] == 3
    assert '"dataset": "vindr"' in capsys.readouterr().out


def test_loader_row_order_and_missing_files(synth, tmp_path):
    root, _ = synth
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    expected, expected_report = load_vindr_physionet(root, "train")
    for name in ("annotations_train.csv", "image_labels_train.csv"):
        lines = (copy / "annotations" / name).read_text().splitlines()
        shuffled = [lines[0], *np.random.default_rng(0).permutation(lines[1:]).tolist()]
        (copy / "annotations" / name).write_text("\n".join(shuffled) + "\n")
    records, report = load_vindr_physionet(copy, "train")
    assert [(r.image_id, r.findings, r.global_labels) for r in records] == [
        (r.image_id, r.findings, r.global_labels) for r in expected]
    assert report["removed_ids"] == expected_report["removed_ids"]

    gone = expected[0].image_id
    (copy / "train" / f"{gone}.dicom").unlink()
    records, report = load_vindr_physionet(copy, "train")
    assert report["missing_files"] == [gone] and len(records) == len(expected) - 1


def test_loader_errors(synth, tmp_path):
    root, _ = synth
    copy = tmp_path / "copy"
    shutil.copytree(root / "annotations", copy / "annotations")
    ann = copy / "annotations" / "annotations_test.csv"
    text = ann.read_text()
    ann.write_text(text.replace("x_max", "xmax", 1))
    with pytest.raises(ValueError, match=r"annotations_test\.csv.*x_max"):
        load_vindr_physionet(copy, "test")
    lines = text.splitlines()
    box_line = next(i for i, line in enumerate(lines) if i and line.split(",")[3])
    fields = lines[box_line].split(",")
    fields[4] = "abc"
    lines[box_line] = ",".join(fields)
    ann.write_text("\n".join(lines) + "\n")
    # An unreadable coordinate removes its image (its truth is incomplete), named with the line.
    records, report = load_vindr_physionet(copy, "test")
    bad_id = fields[0]
    assert report["bad_rows"] == {bad_id: [f"annotations_test.csv, line {box_line + 1}: y_min='abc' is not a finite number"]}
    assert report["removed_bad_rows"] == 1 and bad_id not in {r.image_id for r in records}
    ann.write_text(text)
    labels = copy / "annotations" / "image_labels_test.csv"
    labels.write_text(labels.read_text().replace("Other disease", "Other", 1))
    with pytest.raises(ValueError, match=r"image_labels_test\.csv.*Other disease"):
        load_vindr_physionet(copy, "test")
    with pytest.raises(ValueError, match="split"):
        load_vindr_physionet(copy, "val")


def test_datamodule_writes_its_synthetic_set_whole_and_once(tmp_path):
    from medgrounder.data.vindr.datamodule import VinDrDataModule

    root = tmp_path / "data" / "vindr"
    (tmp_path / "data" / "vindr.partial").mkdir(parents=True)  # left by an interrupted run
    dm = VinDrDataModule(str(root), synth={"n": 6, "seed": 1, "min_side": 64, "max_side": 96}, decode_workers=1)
    dm.prepare_data()
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["vindr"]
    assert len(list((root / "train").glob("*.dicom"))) + len(list((root / "test").glob("*.dicom"))) == 6
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    dm.prepare_data()  # already there: not written again
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_an_interrupted_writer_leaves_no_folder_at_the_root(tmp_path):
    from medgrounder.core.io import write_complete

    def half_then_fail(folder, n):
        (folder / "train").mkdir(parents=True)
        raise RuntimeError(f"killed after {n} images")

    root = tmp_path / "data" / "vindr"
    with pytest.raises(RuntimeError, match="killed"):
        write_complete(root, half_then_fail, n=3)
    assert not root.exists() and (tmp_path / "data" / "vindr.partial" / "train").is_dir()
    assert write_complete(root, synth_vindr, n=2, seed=0, min_side=32, max_side=48) == root
    assert not (tmp_path / "data" / "vindr.partial").exists() and (root / "annotations").is_dir()
