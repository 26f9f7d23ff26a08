"""``prepare vindr`` on hostile input: a bad file is reported and skipped, a bad root, layout,
csv or flag stops the run before any decoding with one line naming it (issue 18)."""

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import medgrounder.data.vindr.prepared as prepared_module
from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.data.vindr.synth import synth_vindr
from medgrounder.prepare import main
from test_dicom import set_raw, write_dicom

SIZE = 64
BOX_HEADER = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]


def write_root(root: Path, ids: dict[str, list[str]], box_rows=None) -> Path:
    """A PhysioNet-layout root: one tiny DICOM per id, one "No finding" reader each (or
    ``box_rows`` for train)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) * 3) % 4096
    for split in ("train", "test"):
        rows = [(i, "R1", "No finding", "", "", "", "") for i in ids.get(split, [])]
        if split == "train" and box_rows is not None:
            rows = box_rows
        with open(root / "annotations" / f"annotations_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([BOX_HEADER, *rows])
        with open(root / "annotations" / f"image_labels_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image_id", "rad_id", *LOCAL_LABELS, *GLOBAL_LABELS])
            w.writerows([(i, "R1", *[0] * len(LOCAL_LABELS), *[0] * 5, 1) for i in ids.get(split, [])])
        (root / split).mkdir(exist_ok=True)
        for i in ids.get(split, []):
            if "/" not in i and not i.startswith("."):
                write_dicom(root / split / f"{i}.dicom", pixels, WindowCenter="2000", WindowWidth="3000")
    return root


def run(root, out, *flags):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every malformed value it reads
        return main(["vindr", "--root", str(root), "--out", str(out), "--size", str(SIZE), "--workers", "1", *flags])


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _listed(out: Path) -> set[str]:
    return {json.loads(line)["image_id"] for line in (out / "annotations.jsonl").read_text().splitlines()}


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exc:
        run(*args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# --------------------------------------------------------------------------------------------
# Item 1: one bad image never stops the run


def test_malformed_headers_are_reported_and_skipped(tmp_path):
    root = write_root(tmp_path / "raw", {"train": ["good", "wc", "slope", "frames", "nophot"], "test": ["t1"]})
    set_raw(root / "train" / "wc.dicom", WindowCenter="abc")
    set_raw(root / "train" / "slope.dicom", RescaleSlope="x")
    set_raw(root / "train" / "frames.dicom", NumberOfFrames="two")
    set_raw(root / "train" / "nophot.dicom", PhotometricInterpretation=None)
    expected = {"wc": "Window Center 'abc' is not a number", "frames": "Number of Frames 'two' is not a whole",
                "nophot": "no Photometric Interpretation"}
    for windowing, also in (("litegpt", {}), ("dicom", {"slope": "Rescale Slope 'x' is not a number"})):
        out = tmp_path / windowing
        for _ in range(2):  # a rerun passes the same files the same way
            summary = run(root, out, "--windowing", windowing)
            report = _report(out)
            reasons = {u["image_id"]: u for u in report["unreadable_files"]}
            want = {**expected, **also}
            assert sorted(reasons) == sorted(want)
            assert all(want[i] in u["reason"] for i, u in reasons.items()), reasons
            assert all(u["file"] == f"train/{i}.dicom" for i, u in reasons.items())
            assert summary["unreadable_files"] == len(expected) + len(also)
            assert _listed(out) == {"good", "t1"} | ({"slope"} if windowing == "litegpt" else set())


def test_any_exception_in_one_image_is_reported(tmp_path, monkeypatch):
    """Whatever one file makes the decoder raise, it is that file's report entry (type and
    message), and the rest of the run goes on."""
    root = write_root(tmp_path / "raw", {"train": ["a", "b", "c"], "test": ["t"]})
    real = prepared_module.load_cache_image

    def flaky(src, size, windowing):
        if Path(src).stem == "b":
            raise RuntimeError("decoder crashed")
        return real(src, size, windowing)

    monkeypatch.setattr(prepared_module, "load_cache_image", flaky)
    run(root, tmp_path / "out")
    report = _report(tmp_path / "out")
    assert report["unreadable_files"] == [{"image_id": "b", "split": "train", "file": "train/b.dicom",
                                           "reason": "RuntimeError: decoder crashed"}]
    assert _listed(tmp_path / "out") == {"a", "c", "t"}


# --------------------------------------------------------------------------------------------
# Item 9: problems found before decoding, said in one line


def test_test_split_csv_is_checked_before_any_decoding(tmp_path, capsys):
    root = write_root(tmp_path / "raw", {"train": ["a", "b"], "test": ["t"]})
    test_csv = root / "annotations" / "annotations_test.csv"
    good = test_csv.read_text()
    test_csv.write_text(good.replace("x_max", "xmax", 1))  # a file the reader cannot use
    err = _error(capsys, root, tmp_path / "out")
    assert "annotations_test.csv" in err and "x_max" in err
    assert not list(tmp_path.glob("out/images/*/*.png"))
    # A bad row is not a bad file: its image is removed and reported, the rest prepared.
    with open(test_csv, "w", newline="") as f:
        f.write(good)
        csv.writer(f).writerow(["t", "R2", "Not a class", 1, 1, 5, 5])
    run(root, tmp_path / "out")
    bad = _report(tmp_path / "out")["splits"]["test"]["bad_rows"]
    assert bad == {"t": ["annotations_test.csv, line 3: unknown class_name 'Not a class'"]}


def test_bad_root_out_and_layout(tmp_path, capsys):
    root = write_root(tmp_path / "raw", {"train": ["a"], "test": ["t"]})
    assert f"root {tmp_path / 'nowhere'} does not exist" in _error(capsys, tmp_path / "nowhere", tmp_path / "o")
    assert "neither annotations/" in _error(capsys, tmp_path / "raw" / "train", tmp_path / "o")
    (tmp_path / "file").write_text("x")
    assert f"out {tmp_path / 'file'} exists and is not a directory" in _error(capsys, root, tmp_path / "file")
    assert "cannot create out" in _error(capsys, root, tmp_path / "file" / "sub")
    assert "pass --layout physionet" in _error(capsys, root, tmp_path / "o", "--layout", "kaggle")
    with pytest.raises(SystemExit) as exc:
        run(root, tmp_path / "o", "--layout", "dicomdir")
    assert exc.value.code == 2 and "choose from 'auto', 'physionet', 'kaggle'" in capsys.readouterr().err
    (root / "annotations" / "image_labels_test.csv").unlink()
    assert "image_labels_test.csv does not exist" in _error(capsys, root, tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written before the checks pass


def test_kaggle_layout_is_detected(tmp_path, capsys):
    root = tmp_path / "vinbigdata"
    synth_vindr(root, n=6, seed=4, layout="kaggle", min_side=64, max_side=128)
    err = _error(capsys, root, tmp_path / "o", "--layout", "physionet")
    assert "looks like the Kaggle layout" in err and "pass --layout kaggle" in err
    summary = run(root, tmp_path / "o")
    assert summary["layout"] == "kaggle" and summary["images"] > 0


def test_non_utf8_csv_is_named(tmp_path, capsys):
    root = write_root(tmp_path / "raw", {"train": ["a"], "test": ["t"]})
    path = root / "annotations" / "annotations_test.csv"
    path.write_bytes(path.read_bytes() + "t,R2,No finding,,,,,caf\xe9\n".encode("latin-1"))
    err = _error(capsys, root, tmp_path / "o")
    assert f"{path} is not UTF-8 text (byte 0xe9" in err


def test_cache_reused_only_from_the_same_source(tmp_path):
    ids = {"train": ["a", "b"], "test": ["t"]}
    first, second = write_root(tmp_path / "r1", ids), write_root(tmp_path / "r2", ids)
    out = tmp_path / "out"
    assert run(first, out)["written"] == 3
    assert (run(first, out)["written"], _report(out)["existing"]) == (0, 3)
    # Another root with the same ids, and an edited file: decoded again.
    assert run(second, out)["written"] == 3
    write_dicom(second / "train" / "a.dicom", np.zeros((30, 40), np.uint16) + 7)
    assert (run(second, out)["written"], _report(out)["existing"]) == (1, 2)
    with Image.open(out / "images" / "train" / "a.png") as im:
        assert np.asarray(im).std() == 0 and json.loads(im.text["source"])[0] == str((second / "train" / "a.dicom").resolve())


# --------------------------------------------------------------------------------------------
# Item 10 and 8: --size bounds, ids that would leave the folders


@pytest.mark.parametrize(("value", "message"), [("32", "32 is outside 64..4096"), ("5000", "outside 64..4096"),
                                                ("big", "'big' is not a whole number")])
def test_size_is_bounded(tmp_path, capsys, value, message):
    with pytest.raises(SystemExit) as exc:
        main(["vindr", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--size", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--size" in err and message in err


def test_ids_that_leave_the_folders_are_refused(tmp_path):
    root = write_root(tmp_path / "data" / "raw", {"train": ["ok", "../secret", "sub/x", ".hidden"], "test": ["t"]})
    # A DICOM where "../secret" would read it, beside the root.
    write_dicom(tmp_path / "data" / "raw" / "secret.dicom", np.ones((4, 4), np.uint16))
    out = tmp_path / "data" / "out"
    summary = run(root, out)
    invalid = {e["image_id"]: e["reason"] for e in _report(out)["invalid_ids"]}  # one entry per csv row
    assert sorted(invalid) == sorted([".hidden", "../secret", "sub/x"]) and summary["invalid_ids"] == 3
    assert "path separator" in invalid["../secret"] and "starts with a dot" in invalid[".hidden"]
    assert _listed(out) == {"ok", "t"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["images/test/t.png", "images/train/ok.png"]
    assert not (out.parent / "secret.png").exists() and not (out / "images" / "secret.png").exists()


# --------------------------------------------------------------------------------------------
# Properties: whatever the header values or csv cells, prepare never raises, and every listed
# image ends in annotations.jsonl or in report.json with its reason.

_text = st.text(st.characters(codec="latin-1", exclude_characters="\\\x00"), max_size=8)
_number = st.one_of(st.integers(-5000, 5000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    _text, st.just(""))
_value = st.one_of(st.none(), _number, st.lists(_number, min_size=2, max_size=3).map("\\".join))
_header = st.fixed_dictionaries({}, optional={
    "WindowCenter": _value, "WindowWidth": _value, "RescaleSlope": _value, "RescaleIntercept": _value,
    "NumberOfFrames": _value,
    "PhotometricInterpretation": st.one_of(st.none(), st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "", "mono"])),
})
_shape = st.fixed_dictionaries({}, optional={"BitsStored": st.integers(0, 24), "Columns": st.integers(0, 60),
                                             "Rows": st.integers(0, 40)})


def _all_accounted(out: Path, ids: set[str]) -> None:
    report = _report(out)
    failed = {e["image_id"] for key in ("unreadable_files", "missing_files", "invalid_ids") for e in report[key]}
    for split in report["splits"].values():  # removed by the label rules, each with its reason
        failed |= {*split["removed_ids"], *split["bad_rows"], *split["removed_no_box_inside"]}
    assert all(e.get("reason") for e in report["unreadable_files"])
    listed = _listed(out)
    assert listed | failed == ids and not listed & failed


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(headers=st.lists(st.tuples(_header, _shape), min_size=3, max_size=3),
       windowing=st.sampled_from(["dicom", "litegpt"]))
def test_prepare_never_raises_on_header_values(tmp_path_factory, headers, windowing):
    tmp = tmp_path_factory.mktemp("prop")
    ids = [f"i{k}" for k in range(len(headers))]
    root = write_root(tmp / "raw", {"train": ids, "test": []})
    for iid, (raw, shape) in zip(ids, headers, strict=True):
        path = root / "train" / f"{iid}.dicom"
        if shape:
            ds = pydicom.dcmread(path)
            for key, value in shape.items():
                setattr(ds, key, value)
            ds.save_as(path)
        set_raw(path, **raw)
    run(root, tmp / "out", "--windowing", windowing)
    _all_accounted(tmp / "out", set(ids))


_cell = st.one_of(st.integers(-50, 100).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                  st.text(max_size=6), st.just(""))


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["R1", "R2", ""]),
                               st.sampled_from(["No finding", "Nodule/Mass", "Cardiomegaly", "nodule", ""]),
                               _cell, _cell, _cell, _cell), min_size=1, max_size=6))
def test_prepare_on_csv_cells_finishes_or_names_the_file(tmp_path_factory, capsys, rows):
    """Bad cells either stop the run at the start with one line naming the csv file (exit 2),
    or the run finishes with every image accounted for."""
    tmp = tmp_path_factory.mktemp("cells")
    root = write_root(tmp / "raw", {"train": ["a", "b", "c"], "test": []}, box_rows=rows)
    try:
        run(root, tmp / "out")
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 2 and "annotations_train.csv" in err and "Traceback" not in err
        assert not list(tmp.glob("out/images/*/*.png"))
        return
    _all_accounted(tmp / "out", {"a", "b", "c"})  # every id of either csv
