"""``python -m medgrounder.prepare vindr``: the image cache, annotations.jsonl, the report,
resuming, bad files, the Kaggle layout and the DataModule reading the output."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from helpers import pillow_bilinear
from medgrounder.core.boxes import iou, to_grid
from medgrounder.core.labels import KAGGLE_CLASSES, LOCAL_LABELS
from medgrounder.data.vindr.datamodule import VinDrDataModule
from medgrounder.data.vindr.dicom import load_dicom_uint8, reduce_factors
from medgrounder.data.vindr.prepared import (
    load_cache_image,
    prepare_vindr,
    read_prepared,
    resize_square,
)
from medgrounder.data.vindr.records import load_vindr_kaggle, load_vindr_physionet
from medgrounder.data.vindr.synth import synth_vindr
from medgrounder.prepare import main
from medgrounder.utils.preflight import MissingInputError, check_inputs

SIZE = 64
N, SEED = 24, 5


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _annotations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw") / "vindr"
    summary = synth_vindr(root, n=N, seed=SEED)
    return root, summary


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    root, _ = raw
    out = tmp_path_factory.mktemp("prepared") / "cache"
    report = prepare_vindr(root, out, size=SIZE, workers=2)
    return out, report


# --------------------------------------------------------------------------------------------
# The output


def test_outputs_match_the_loader_and_decoder(raw, prepared):
    root, summary = raw
    out, report = prepared
    rows = _annotations(out)
    expected = {s: load_vindr_physionet(root, s) for s in ("train", "test")}
    assert [(r["split"], r["image_id"]) for r in rows] == [
        (s, rec.image_id) for s in ("train", "test") for rec in expected[s][0]]
    assert report["images"] == len(rows) == report["written"] == N - summary["reader_conflicts"]
    assert report["removed_conflicts"] == summary["reader_conflicts"] >= 1
    assert report["splits"]["train"]["removed_ids"] == expected["train"][1]["removed_ids"]
    assert report["unreadable_files"] == report["missing_files"] == [] and report["existing"] == 0

    records = {r.image_id: r for s in ("train", "test") for r in expected[s][0]}
    for row in rows:
        rec = records[row["image_id"]]
        assert (row["width"], row["height"]) == (rec.width, rec.height)
        assert [(n, tuple(b)) for n, *b in row["findings"]] == rec.findings
        assert row["global_labels"] == rec.global_labels
        assert row["image"] == f"images/{row['split']}/{row['image_id']}.png"
        assert root / row["dicom"] == Path(rec.path)
        with Image.open(out / row["image"]) as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
            assert (im.text["original_width"], im.text["original_height"]) == (str(rec.width), str(rec.height))
            pixels = np.asarray(im)
        np.testing.assert_array_equal(pixels, resize_square(load_dicom_uint8(rec.path), SIZE))
    assert json.loads((out / "prepare.json").read_text())["size"] == SIZE
    assert report["root"] == str(root.resolve())
    assert not list(out.rglob("*.tmp"))
    assert str(root) not in (out / "annotations.jsonl").read_text()


def test_resize_square_is_close_to_the_full_bilinear_filter(raw):
    root, _ = raw
    img = load_dicom_uint8(sorted((root / "train").glob("*.dicom"))[0])
    full = np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR)).astype(int)
    fast = resize_square(img, SIZE).astype(int)
    assert fast.shape == (SIZE, SIZE) and fast.dtype == int
    assert np.abs(fast - full).mean() < 1.0


def test_an_older_format_is_refused(raw, prepared, tmp_path):
    """A cache written by format 1 (a 2x deeper box reduction) gets no new-format images."""
    root, _ = raw
    settings = json.loads((prepared[0] / "prepare.json").read_text())
    assert settings["format"] == 2
    old = tmp_path / "old"
    old.mkdir()
    (old / "prepare.json").write_text(json.dumps({**settings, "format": 1}))
    with pytest.raises(ValueError, match=r"other settings.*'format': \(1, 2\)"):
        prepare_vindr(root, old, size=SIZE)


def test_cache_image_is_the_resize_of_the_windowed_image(raw):
    """One pass (window + box reduction, then bilinear) = the resize of the full-size 8-bit
    image, for both windowings, at sizes with and without a reduction; that resize is Pillow's
    reduce and its two one-axis bilinear passes, within a grey level of its two-axis resize."""
    root, _ = raw
    for path in sorted((root / "train").glob("*.dicom"))[:4]:
        for windowing in ("dicom", "litegpt"):
            img = load_dicom_uint8(path, windowing)
            for size in (7, SIZE, 100, 1000):
                out, width, height = load_cache_image(str(path), size, windowing)
                assert (width, height) == (img.shape[1], img.shape[0])
                np.testing.assert_array_equal(out, resize_square(img, size))
                kx, ky = reduce_factors(width, height, size)
                reduced = np.asarray(Image.fromarray(img).reduce((kx, ky)))
                np.testing.assert_array_equal(out, pillow_bilinear(reduced, size, size, (0, 0, width / kx, height / ky)))
                two_axis = Image.fromarray(img).resize((size, size), Image.BILINEAR, reducing_gap=1.0)
                assert np.abs(out.astype(int) - np.asarray(two_axis)).max() <= 1


def _write_bad_files(root: Path, ids: list[str]) -> dict[str, str]:
    """Replace four train DICOMs by broken ones; return id -> expected reason."""
    not_dicom, no_pixels, truncated, no_syntax = ids
    (root / "train" / f"{not_dicom}.dicom").write_text("image_id,rad_id\n")
    ds = pydicom.dcmread(root / "train" / f"{no_pixels}.dicom")
    del ds.PixelData
    ds.save_as(root / "train" / f"{no_pixels}.dicom", enforce_file_format=True)
    path = root / "train" / f"{truncated}.dicom"
    path.write_bytes(path.read_bytes()[:-1000])
    ds = pydicom.dcmread(root / "train" / f"{no_syntax}.dicom")
    del ds.file_meta.TransferSyntaxUID
    ds.save_as(root / "train" / f"{no_syntax}.dicom", implicit_vr=False, little_endian=True)
    return {not_dicom: "not a DICOM file", no_pixels: "no pixel data",
            truncated: "less than expected", no_syntax: "Transfer Syntax UID"}


def test_bad_files_are_reported_and_skipped(raw, prepared, tmp_path):
    root, _ = raw
    copy = tmp_path / "raw"
    shutil.copytree(root, copy)
    good, _ = load_vindr_physionet(root, "train")
    bad = _write_bad_files(copy, [r.image_id for r in good[:4]])
    (copy / "test" / f"{load_vindr_physionet(root, 'test')[0][0].image_id}.dicom").unlink()

    report = main(["vindr", "--root", str(copy), "--out", str(tmp_path / "out"), "--size", str(SIZE),
                   "--workers", "2"])
    full = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["unreadable_files"] == 4 and report["missing_files"] == 1
    listed = {u["image_id"]: u for u in full["unreadable_files"]}
    assert sorted(listed) == sorted(bad)
    for iid, reason in bad.items():
        assert reason in listed[iid]["reason"] and listed[iid]["file"] == f"train/{iid}.dicom"
    # Everything else is exactly what a clean run gives.
    clean = [r for r in _annotations(prepared[0]) if r["image_id"] not in bad]
    missing = full["missing_files"][0]["image_id"]
    assert _annotations(tmp_path / "out") == [r for r in clean if r["image_id"] != missing]
    assert not (tmp_path / "out" / "images" / "train" / f"{good[0].image_id}.png").exists()


# --------------------------------------------------------------------------------------------
# Resuming


def test_rerun_skips_finished_images_and_removes_stale_tmp(raw, prepared, tmp_path):
    root, _ = raw
    out = tmp_path / "cache"
    shutil.copytree(prepared[0], out)
    before = _files(out)
    pngs = sorted(out.glob("images/*/*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in pngs}
    pngs[0].unlink()
    (out / "images" / "train" / ".half.png.999.tmp").write_bytes(b"\x89PNG")

    report = prepare_vindr(root, out, size=SIZE, workers=1)
    assert (report["written"], report["existing"], report["stale_tmp_removed"]) == (1, len(pngs) - 1, 1)
    assert all(p.stat().st_mtime_ns == stamps[p] for p in pngs[1:])
    after = _files(out)
    assert after.pop("report.json") != before.pop("report.json")
    assert after == before  # the rewritten image and annotations.jsonl are byte-identical

    with pytest.raises(ValueError, match=r"other settings.*windowing"):
        prepare_vindr(root, out, size=SIZE, windowing="litegpt")
    with pytest.raises(SystemExit) as exc:
        main(["vindr", "--root", str(root), "--out", str(out), "--size", str(SIZE + 1)])
    assert exc.value.code == 2


def test_killed_run_leaves_only_whole_files(tmp_path):
    root = tmp_path / "raw"
    synth_vindr(root, n=40, seed=1, min_side=600, max_side=900)
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "medgrounder.prepare", "vindr", "--root", str(root), "--out", str(out),
           "--size", "64", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and len(list(out.glob("images/*/*.png"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no-op if it already finished
    proc.wait()
    for png in out.glob("images/*/*.png"):  # every finished name holds a whole image
        with Image.open(png) as im:
            im.load()
            assert im.size == (64, 64) and "original_width" in im.text
    if (out / "annotations.jsonl").exists():
        _annotations(out)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == len(list(out.glob("images/*/*.png"))) == len(_annotations(out))
    assert report["written"] + report["existing"] == report["images"] and not list(out.rglob("*.tmp"))


# --------------------------------------------------------------------------------------------
# The DataModule on prepared output


def _dm(root, **kw):
    return VinDrDataModule(str(root), image_size=kw.pop("image_size", SIZE), decode_workers=1,
                           val_fraction=0.25, seed=0, **kw)


def test_datamodule_reads_prepared_output(raw, prepared):
    root, _ = raw
    out, _ = prepared
    dm_raw, dm = _dm(root), _dm(out)
    dm_raw.setup()
    dm.setup()
    assert dm.prepared and not dm_raw.prepared
    for split in ("train", "test"):
        mine, theirs = dm.records[split], dm_raw.records[split]
        assert [(r.image_id, r.width, r.height, r.findings, r.global_labels) for r in mine] == [
            (r.image_id, r.width, r.height, r.findings, r.global_labels) for r in theirs]
        assert dm.images[split].shape == dm_raw.images[split].shape == (len(mine), SIZE, SIZE)
        assert [r.path for r in mine] == [r.path for r in theirs]  # the source DICOMs
        for i, rec in enumerate(mine):
            with Image.open(rec.image) as im:
                np.testing.assert_array_equal(dm.images[split][i].numpy(), np.asarray(im))
        # Same windowing; only the resampling differs from the raw path's full-support bilinear:
        # a box reduction, then bilinear (0.3 grey levels apart on full-size films, about 1.2 on
        # these small sharp ones).
        diff = (dm.images[split].float() - dm_raw.images[split].float()).abs().mean()
        assert diff < 1.5
    assert dm.reports["train"]["removed_conflicts"] == dm_raw.reports["train"]["removed_conflicts"]
    for split in ("train", "val", "test"):
        for task in ("identify", "vqa"):
            assert [(s.record.image_id, s.answer) for s in dm.samples(split, task)] == [
                (s.record.image_id, s.answer) for s in dm_raw.samples(split, task)]
    assert len(dm.samples("val", "vqa")) == round(len(dm.records["train"]) * 0.25) > 0
    item = dm.dataset("test", "identify")[0]
    assert item["image"].shape == (SIZE, SIZE) and item["meta"]["image_width"] == dm.records["test"][0].width


def test_datamodule_resizes_and_checks_settings(prepared):
    out, _ = prepared
    dm = _dm(out, image_size=32, limit_train_images=5)
    dm.setup()
    assert dm.images["train"].shape == (5, 32, 32)
    with pytest.raises(ValueError, match="windowing"):
        _dm(out, windowing="litegpt").setup()
    with pytest.raises(ValueError, match="dedup_mode"):
        _dm(out, dedup_mode="mean").setup()


# --------------------------------------------------------------------------------------------
# Kaggle layout


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle") / "vinbigdata"
    summary = synth_vindr(root, n=30, seed=2, layout="kaggle", max_side=320)
    return root, summary


def test_kaggle_layout_files(kaggle):
    root, summary = kaggle
    assert summary["layout"] == "kaggle" and sorted(p.name for p in root.iterdir()) == ["test", "train", "train.csv"]
    with open(root / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    for r in rows:
        if r["class_name"] == "No finding":
            assert r["class_id"] == "14" and r["x_min"] == r["y_max"] == ""
        else:
            assert KAGGLE_CLASSES[int(r["class_id"])] == r["class_name"]
    assert {r["image_id"] for r in rows} == {p.stem for p in (root / "train").glob("*.dicom")}
    assert len(list((root / "test").glob("*.dicom"))) == summary["test"]


def test_kaggle_loader(kaggle):
    root, summary = kaggle
    records, report = load_vindr_kaggle(root)
    assert report["removed_conflicts"] == summary["reader_conflicts"] >= 1
    assert report["images"] == len(records) == summary["train"] - summary["reader_conflicts"]
    assert report["boxes_raw"] == 3 * report["boxes_dedup"] + summary["duplicate_boxes"]
    assert "missing_labels" not in report and report["missing_files"] == []
    assert all(r.global_labels == [] and r.split == "train" for r in records)
    assert {n for r in records for n, _ in r.findings} <= set(KAGGLE_CLASSES)
    for rec in records:
        ds = pydicom.dcmread(rec.path, stop_before_pixels=True)
        assert (rec.width, rec.height) == (ds.Columns, ds.Rows)


def test_kaggle_bad_class_id(kaggle, tmp_path):
    root, _ = kaggle
    (tmp_path / "train").mkdir()
    text = (root / "train.csv").read_text().splitlines()
    fields = text[1].split(",")
    fields[2] = "13" if fields[2] != "13" else "12"
    (tmp_path / "train.csv").write_text("\n".join([text[0], ",".join(fields)]) + "\n")
    # A row that cannot be read removes its image, reported with file and line.
    _, report = load_vindr_kaggle(tmp_path)
    assert list(report["bad_rows"]) == [fields[0]] and report["removed_bad_rows"] == 1
    assert report["bad_rows"][fields[0]][0].startswith("train.csv, line 2: class_id")
    fields[1], fields[2] = "Edema", "3"  # a PhysioNet-only class
    (tmp_path / "train.csv").write_text("\n".join([text[0], ",".join(fields)]) + "\n")
    _, report = load_vindr_kaggle(tmp_path)
    assert report["bad_rows"][fields[0]] == ["train.csv, line 2: unknown class_name 'Edema'"]


def test_prepare_kaggle_and_datamodule(kaggle, tmp_path):
    root, summary = kaggle
    report = prepare_vindr(root, tmp_path / "out", size=SIZE, layout="kaggle")
    rows = _annotations(tmp_path / "out")
    assert {r["split"] for r in rows} == {"train"} and list(report["splits"]) == ["train"]
    assert len(rows) == summary["train"] - summary["reader_conflicts"]
    _, _, by_split = read_prepared(tmp_path / "out")
    assert by_split["test"] == []
    dm = _dm(tmp_path / "out")
    dm.setup()
    assert len(dm.samples("train", "identify")) > 0 and dm.images["test"].shape == (0, SIZE, SIZE)
    with pytest.raises(ValueError, match="no global labels"):
        dm.samples("train", "vqa")


# --------------------------------------------------------------------------------------------
# Label rules on hand-written csv files


def _tiny_dicom(path: Path, width: int, height: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = height, width, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(width * height, dtype="<u2").reshape(height, width).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


CHAIN = [(0, 0, 10, 10), (2, 0, 12, 10), (4, 0, 14, 10)]  # IoU 2/3 neighbours, 3/7 ends
HALF = [(20, 20, 40, 40), (20, 20, 40, 30)]  # IoU exactly 0.5


def test_label_rules_kaggle(tmp_path):
    assert iou(*CHAIN[1:]) > 0.5 > iou(CHAIN[0], CHAIN[2]) and iou(*HALF) == 0.5
    rows = [
        # a: chain over three readers; one reader draws Cardiomegaly twice; IoU 0.5 keeps both
        *[("a", "Nodule/Mass", 8, f"R{k}", *b) for k, b in enumerate(CHAIN, 1)],
        ("a", "Cardiomegaly", 3, "R1", 50, 50, 90, 80), ("a", "Cardiomegaly", 3, "R1", 51, 50, 90, 81),
        *[("a", "Aortic enlargement", 0, f"R{k}", *b) for k, b in enumerate(HALF, 1)],
        # b: one reader says No finding, another draws: removed
        ("b", "No finding", 14, "R1", "", "", "", ""), ("b", "ILD", 5, "R2", 1, 1, 5, 5),
        # c: three readers, no finding
        *[("c", "No finding", 14, f"R{k}", "", "", "", "") for k in (1, 2, 3)],
        # d: a box past the image edge is clipped (the image is 100 x 50)
        ("d", "Pneumothorax", 12, "R4", 60, 10, 140, 70),
    ]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        w.writerows(rows[::-1])  # row order must not matter
    for iid in "abc":
        _tiny_dicom(tmp_path / "train" / f"{iid}.dicom", 200, 100)
    _tiny_dicom(tmp_path / "train" / "d.dicom", 100, 50)

    records, report = load_vindr_kaggle(tmp_path)
    by_id = {r.image_id: r for r in records}
    assert sorted(by_id) == ["a", "c", "d"] and report["removed_ids"] == ["b"]
    assert by_id["a"].findings == [
        ("Aortic enlargement", (20.0, 20.0, 40.0, 30.0)), ("Aortic enlargement", (20.0, 20.0, 40.0, 40.0)),
        ("Cardiomegaly", (50.0, 50.0, 90.0, 80.0)),  # medoid tie -> the smaller box
        ("Nodule/Mass", (2.0, 0.0, 12.0, 10.0)),  # the chain's middle box
    ]
    assert by_id["c"].findings == [] and report["no_finding_images"] == 1
    assert by_id["d"].findings == [("Pneumothorax", (60.0, 10.0, 100.0, 50.0))]
    assert to_grid(by_id["d"].findings[0][1], 100, 50) == (60, 20, 100, 100)
    assert report["boxes_clipped"] == 1 and (report["boxes_raw"], report["boxes_dedup"]) == (8, 5)
    mean, _ = load_vindr_kaggle(tmp_path, dedup_mode="mean")
    assert mean[0].findings[2] == ("Cardiomegaly", (50.5, 50.0, 90.0, 80.5))


def test_label_rules_physionet_global_union(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    glob_cols = ["COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"]
    with open(ann / "annotations_train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"])
        w.writerows([("a", "R1", "Consolidation", 1, 1, 9, 9), ("a", "R2", "Lung cavity", 20, 20, 30, 30),
                     ("b", "R1", "No finding", "", "", "", ""), ("b", "R2", "No finding", "", "", "", "")])
    with open(ann / "image_labels_train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "rad_id", *LOCAL_LABELS, *glob_cols])
        zeros = [0] * len(LOCAL_LABELS)
        w.writerows([("a", "R1", *zeros, 0, 0, 1, 0, 0, 0), ("a", "R2", *zeros, 0, 0, 0, 1, 0, 1),
                     ("b", "R1", *zeros, 0, 0, 0, 0, 0, 1), ("b", "R2", *zeros, 0, 0, 0, 0, 0, 1)])
    for iid in "ab":
        _tiny_dicom(tmp_path / "train" / f"{iid}.dicom", 40, 40)
    records, report = load_vindr_physionet(tmp_path, "train")
    # Union over readers; "No finding" only when nothing else is positive.
    assert [r.global_labels for r in records] == [["Pneumonia", "Tuberculosis"], ["No finding"]]
    assert report["removed_conflicts"] == 0 and report["missing_labels"] == 0


# --------------------------------------------------------------------------------------------
# Determinism


LABEL_SCRIPT = """
import sys
from medgrounder.data.vindr.records import load_vindr
from medgrounder.data.vindr.prepared import annotations_text
root, layout = sys.argv[1], sys.argv[2]
splits = ("train",) if layout == "kaggle" else ("train", "test")
records = [r for s in splits for r in load_vindr(root, s, layout)[0]]
sys.stdout.write(annotations_text(records, {(r.split, r.image_id): r.path for r in records}))
"""


@pytest.mark.parametrize("layout", ["physionet", "kaggle"])
def test_label_output_independent_of_hash_seed(raw, kaggle, layout):
    root = (raw if layout == "physionet" else kaggle)[0]
    outputs = []
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", LABEL_SCRIPT, str(root), layout], env=env,
                             capture_output=True, check=True)
        outputs.append(run.stdout)
    assert outputs[0].count(b"\n") > 10 and b'"findings": [["' in outputs[0]
    assert outputs[0] == outputs[1] == outputs[2]


def test_preflight_accepts_a_prepared_root(prepared, tmp_path):
    from helpers import compose_train

    cfg = compose_train([f"data.root={prepared[0]}", "data.synth=null", f"paths.output_dir={tmp_path}"])
    check_inputs(cfg)  # no raw layout needed
    cfg = compose_train([f"data.root={tmp_path}/nowhere", "data.synth=null", f"paths.output_dir={tmp_path}"])
    with pytest.raises(MissingInputError, match=r"annotations\.jsonl"):
        check_inputs(cfg)
