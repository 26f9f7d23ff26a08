"""``data.label_fusion``: how the VinDr readers' boxes become labels (``data/vindr/records.py``):
``dedup`` as before, ``wbf`` against a hand-computed case and against ``ensemble_boxes`` itself,
``none``, consensus and single-reader splits, row order, the Kaggle layout, the prepared cache
and the start-up checks."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
from ensemble_boxes import weighted_boxes_fusion

from helpers import compose_train
from medgrounder.core.boxes import iou
from medgrounder.core.labels import KAGGLE_CLASS_ID, LOCAL_INDEX, LOCAL_LABELS
from medgrounder.data.vindr.datamodule import VinDrDataModule
from medgrounder.data.vindr.prepared import prepare_vindr, read_prepared
from medgrounder.data.vindr.records import load_vindr_kaggle, load_vindr_physionet
from medgrounder.prepare import main as prepare_main
from medgrounder.utils.schema import ConfigValueError, check_values, value_problems
from test_prepare import _tiny_dicom
from test_vindr_labels import _labels_for, _write

W, H = 100, 80
NODULE, EFFUSION = "Nodule/Mass", "Pleural effusion"
# a: R1 and R2 agree (IoU 288/512 = 0.5625), R3 alone. b: R1 and R2 draw the same effusion, R3's
# only box lies outside the image (dropped): R3 still read the image.
HAND = [("a", "R1", NODULE, 10, 10, 30, 30), ("a", "R2", NODULE, 14, 12, 34, 32),
        ("a", "R3", NODULE, 60, 40, 80, 60),
        ("b", "R1", EFFUSION, 5, 5, 25, 25), ("b", "R2", EFFUSION, 5, 5, 25, 25),
        ("b", "R3", EFFUSION, 150, 100, 190, 120)]


def _by_id(records):
    return {r.image_id: r for r in records}


def _hand_root(tmp_path, boxes=HAND, split="train"):
    _write(tmp_path, boxes, _labels_for(boxes), split=split, size=(W, H))
    return tmp_path


def test_wbf_hand_computed(tmp_path):
    assert iou(HAND[0][3:], HAND[1][3:]) == 288 / 512
    root = _hand_root(tmp_path)
    records, report = load_vindr_physionet(root, "train", label_fusion="wbf")
    a, b = _by_id(records)["a"], _by_id(records)["b"]
    # every score is 1, so the score-weighted mean is the mean of the two agreeing boxes
    assert [n for n, _ in a.findings] == [NODULE, NODULE]
    assert a.findings[0][1] == pytest.approx((12.0, 11.0, 32.0, 31.0), abs=1e-3)
    assert a.findings[1][1] == pytest.approx((60.0, 40.0, 80.0, 60.0), abs=1e-3)
    assert a.agreement == pytest.approx([2 / 3, 1 / 3])
    assert b.findings == [(EFFUSION, pytest.approx((5.0, 5.0, 25.0, 25.0), abs=1e-3))]
    assert b.agreement == pytest.approx([2 / 3])  # R3 drew, only outside the image
    assert report["label_fusion"] == {"label_fusion": "wbf", "fusion_iou": 0.5, "fusion_conf_type": "avg",
                                      "min_votes": None}
    assert report["fusion_applied"] == "wbf" and report["fusion_skipped"] is None and report["max_readers"] == 3
    assert report["boxes_raw_by_class"] == {NODULE: 3, EFFUSION: 3}
    assert report["boxes_by_class"] == {NODULE: 2, EFFUSION: 1} and report["boxes_dedup"] == 3
    assert report["boxes_outside"] == 1

    votes, report = load_vindr_physionet(root, "train", label_fusion="wbf", min_votes=2)
    assert [(r.image_id, len(r.findings), r.agreement) for r in votes] == [
        ("a", 1, pytest.approx([2 / 3])), ("b", 1, pytest.approx([2 / 3]))]
    assert report["boxes_by_class"] == {NODULE: 1, EFFUSION: 1}
    # no fused box reaches 3 votes: both images had findings, so they are removed, not made normal
    none_left, report = load_vindr_physionet(root, "train", label_fusion="wbf", min_votes=3)
    assert none_left == [] and report["removed_below_min_votes"] == ["a", "b"]


def test_dedup_and_none_on_the_hand_case(tmp_path):
    root = _hand_root(tmp_path)
    default, report = load_vindr_physionet(root, "train")
    dedup, _ = load_vindr_physionet(root, "train", label_fusion="dedup")
    assert default == dedup and all(r.agreement is None for r in dedup)
    assert _by_id(dedup)["a"].findings == [(NODULE, (10.0, 10.0, 30.0, 30.0)), (NODULE, (60.0, 40.0, 80.0, 60.0))]
    assert report["fusion_applied"] == "dedup" and report["boxes_by_class"] == {NODULE: 2, EFFUSION: 1}
    kept, report = load_vindr_physionet(root, "train", label_fusion="none")
    assert _by_id(kept)["a"].findings == [(NODULE, tuple(map(float, row[3:]))) for row in HAND[:3]]
    assert _by_id(kept)["b"].findings == [(EFFUSION, (5.0, 5.0, 25.0, 25.0))] * 2  # both readers' boxes
    assert all(r.agreement is None for r in kept)
    assert report["fusion_applied"] == "none" and report["boxes_by_class"] == {NODULE: 3, EFFUSION: 2}


def test_box_and_model_avg_counts_distinct_readers(tmp_path):
    # R1 draws the nodule twice, R2 once, R3 not at all (another class): avg counts 3 boxes of 3
    # readers as full agreement, box_and_model_avg the 2 readers.
    boxes = [("a", "R1", NODULE, 10, 10, 30, 30), ("a", "R1", NODULE, 11, 10, 31, 30),
             ("a", "R2", NODULE, 10, 11, 30, 31), ("a", "R3", EFFUSION, 50, 40, 90, 70)]
    root = _hand_root(tmp_path, boxes)
    (avg,), _ = load_vindr_physionet(root, "train", label_fusion="wbf")
    (exact,), _ = load_vindr_physionet(root, "train", label_fusion="wbf", fusion_conf_type="box_and_model_avg")
    assert [f[1] for f in avg.findings] == [f[1] for f in exact.findings]  # same clusters, same boxes
    assert avg.agreement == pytest.approx([1.0, 1 / 3]) and exact.agreement == pytest.approx([2 / 3, 1 / 3])


def _random_case(seed: int, n_images: int = 6, readers=("R2", "R5", "R9")):
    """Rows of a PhysioNet box csv: a few findings per image, each drawn by a random subset of
    the readers with jitter, some twice, a few far apart."""
    rng = np.random.default_rng(seed)
    rows, sizes = [], {}
    classes = [LOCAL_LABELS[i] for i in rng.choice(len(LOCAL_LABELS), 4, replace=False)]
    for i in range(n_images):
        iid = f"img{i}"
        w, h = int(rng.integers(300, 900)), int(rng.integers(300, 900))
        sizes[iid] = (w, h)
        for _ in range(int(rng.integers(1, 5))):
            name = classes[int(rng.integers(len(classes)))]
            x1, y1 = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.3) * h
            for rad in readers:
                for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
                    j = rng.normal(0, 0.08, 4) * (bw, bh, bw, bh)
                    box = np.round([x1 + j[0], y1 + j[1], x1 + bw + j[2], y1 + bh + j[3]], 2)
                    rows.append((iid, rad, name, *box.tolist()))
        for rad in readers:  # a reader who drew nothing else gets a box of its own
            if not any(r[0] == iid and r[1] == rad for r in rows):
                rows.append((iid, rad, classes[0], 0.1 * w, 0.1 * h, 0.2 * w, 0.2 * h))
    return rows, sizes


def _write_sized(root, rows, sizes, order=None):
    order = range(len(rows)) if order is None else order
    shuffled = [rows[k] for k in order]
    _write(root, shuffled, _labels_for(shuffled), size=(1, 1))
    for iid, (w, h) in sizes.items():
        _tiny_dicom(root / "train" / f"{iid}.dicom", w, h)


def test_wbf_matches_ensemble_boxes_called_directly(tmp_path):
    rows, sizes = _random_case(3)
    _write_sized(tmp_path, rows, sizes)
    records, report = load_vindr_physionet(tmp_path, "train", label_fusion="wbf", fusion_iou=0.4)
    assert len(records) == len(sizes) and report["boxes_outside"] == report["boxes_clipped"] == 0
    agreements = [a for r in records for a in r.agreement]
    assert min(agreements) < 1 and max(agreements) == 1 and report["boxes_dedup"] < len(rows)
    for rec in records:
        w, h = sizes[rec.image_id]
        mine = [r for r in rows if r[0] == rec.image_id]
        readers = sorted({r[1] for r in mine})
        # the canonical input order: readers sorted, each reader's boxes by (label, box)
        per = [sorted((LOCAL_INDEX[r[2]], tuple(r[3:])) for r in mine if r[1] == rad) for rad in readers]
        boxes, scores, labels = weighted_boxes_fusion(
            [np.array([b for _, b in p]) / [w, h, w, h] for p in per], [np.ones(len(p)) for p in per],
            [[k for k, _ in p] for p in per], iou_thr=0.4, skip_box_thr=0.0, conf_type="avg")
        expected = sorted((LOCAL_LABELS[int(k)], tuple(b * [w, h, w, h]), s)
                          for b, s, k in zip(boxes, scores, labels, strict=True))
        got = sorted((n, b, a) for (n, b), a in zip(rec.findings, rec.agreement, strict=True))
        assert len(got) == len(expected)
        for (n, b, a), (en, eb, es) in zip(got, expected, strict=True):
            assert n == en and b == pytest.approx(eb, abs=1e-3) and a == pytest.approx(es, abs=1e-12)
        assert set(np.round(np.array(rec.agreement) * len(readers), 9)) <= {1.0, 2.0, 3.0}


@pytest.mark.parametrize("fusion", [{"label_fusion": "wbf"}, {"label_fusion": "wbf", "min_votes": 2},
                                    {"label_fusion": "none"}, {"label_fusion": "dedup"},
                                    {"label_fusion": "dedup", "dedup_mode": "mean"}])
def test_row_order_does_not_matter(tmp_path, fusion):
    rows, sizes = _random_case(7)
    _write_sized(tmp_path / "a", rows, sizes)
    _write_sized(tmp_path / "b", rows, sizes, order=np.random.default_rng(1).permutation(len(rows)))
    (ra, rep_a), (rb, rep_b) = (load_vindr_physionet(tmp_path / d, "train", **fusion) for d in "ab")
    strip = [(r.image_id, r.width, r.height, r.findings, r.agreement, r.global_labels) for r in ra]
    assert strip == [(r.image_id, r.width, r.height, r.findings, r.agreement, r.global_labels) for r in rb]
    assert rep_a["boxes_by_class"] == rep_b["boxes_by_class"] and sum(map(len, (r.findings for r in ra))) > 0


def test_consensus_and_single_reader_splits_are_not_fused(tmp_path):
    # PhysioNet's test split is one consensus reading: two overlapping nodules stay two
    boxes = [("t", "R11", NODULE, 10, 10, 30, 30), ("t", "R11", NODULE, 12, 10, 32, 30),
             ("u", "R12", NODULE, 10, 10, 30, 30), ("u", "R13", NODULE, 12, 10, 32, 30)]
    root = _hand_root(tmp_path / "physionet", boxes, split="test")
    records, report = load_vindr_physionet(root, "test", label_fusion="wbf")
    assert [(r.image_id, len(r.findings), r.agreement) for r in records] == [("t", 2, None), ("u", 2, None)]
    assert report["fusion_applied"] == "none" and "consensus" in report["fusion_skipped"]
    assert report["label_fusion"]["label_fusion"] == "wbf"
    # dedup keeps today's behaviour on every split (LiteGPT de-duplicates the test labels too)
    dedup, report = load_vindr_physionet(root, "test")
    assert [len(r.findings) for r in dedup] == [1, 1] and report["fusion_applied"] == "dedup"

    # a train split (Kaggle layout) read by one reader per image: nothing to fuse
    kaggle = tmp_path / "kaggle"
    _write_kaggle(kaggle, [("k", NODULE, "R4", 10, 10, 30, 30), ("k", NODULE, "R4", 12, 10, 32, 30)])
    (rec,), report = load_vindr_kaggle(kaggle, label_fusion="wbf")
    assert len(rec.findings) == 2 and rec.agreement is None
    assert report["fusion_applied"] == "none" and report["max_readers"] == 1
    assert report["fusion_skipped"] == "at most one reader per image: boxes kept as drawn"


def _write_kaggle(root, rows):
    """A Kaggle train.csv of ``(image_id, class_name, rad_id, x_min, y_min, x_max, y_max)``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"])
        w.writerows((iid, name, KAGGLE_CLASS_ID[name], rad, *box) for iid, name, rad, *box in rows)
    for iid in {r[0] for r in rows}:
        _tiny_dicom(root / "train" / f"{iid}.dicom", W, H)


def test_kaggle_layout(tmp_path):
    _write_kaggle(tmp_path, [(iid, name, rad, *box) for iid, rad, name, *box in HAND])
    physionet = _hand_root(tmp_path / "physionet")
    for fusion in ({"label_fusion": "wbf"}, {"label_fusion": "none"}, {"label_fusion": "dedup"}):
        kaggle, report = load_vindr_kaggle(tmp_path, **fusion)
        theirs, _ = load_vindr_physionet(physionet, "train", **fusion)
        assert [(r.image_id, r.findings, r.agreement) for r in kaggle] == [
            (r.image_id, r.findings, r.agreement) for r in theirs]
        assert report["fusion_applied"] == fusion["label_fusion"]
    assert _by_id(kaggle)["a"].findings  # the last loop ran dedup


def test_prepared_cache_keeps_agreement_and_refuses_other_settings(tmp_path, caplog):
    root = _hand_root(tmp_path / "raw")
    out = tmp_path / "prepared"
    with caplog.at_level(logging.INFO, logger="medgrounder.data.vindr.prepared"):
        report = prepare_vindr(root, out, size=32, label_fusion="wbf", min_votes=1)
    assert any("VinDr train labels: wbf, 6 -> 3 boxes" in m and f"{NODULE} 3 -> 2" in m for m in caplog.messages)
    assert report["label_fusion"] == "wbf" and report["min_votes"] == 1
    assert report["splits"]["train"]["boxes_by_class"] == {NODULE: 2, EFFUSION: 1}
    settings = json.loads((out / "prepare.json").read_text())
    assert {k: settings[k] for k in ("label_fusion", "fusion_iou", "fusion_conf_type", "min_votes")} == {
        "label_fusion": "wbf", "fusion_iou": 0.5, "fusion_conf_type": "avg", "min_votes": 1}
    rows = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    assert [len(r["agreement"]) for r in rows] == [len(r["findings"]) for r in rows] == [2, 1]
    expected, _ = load_vindr_physionet(root, "train", label_fusion="wbf")
    _, _, by_split = read_prepared(out)
    assert [(r.findings, r.agreement) for r in by_split["train"]] == [(r.findings, r.agreement) for r in expected]

    def dm(**kw):
        return VinDrDataModule(str(out), image_size=32, decode_workers=1, val_fraction=0, **kw)

    good = dm(label_fusion="wbf", min_votes=1, dedup_mode="mean")  # the dedup keys do not matter to wbf
    good.setup()
    assert [r.agreement for r in good.records["train"]] == [r.agreement for r in expected]
    with pytest.raises(ValueError, match=r"label_fusion.*\('wbf', 'dedup'\)"):
        dm().setup()
    with pytest.raises(ValueError, match=r"fusion_iou.*\(0\.5, 0\.4\)"):
        dm(label_fusion="wbf", min_votes=1, fusion_iou=0.4).setup()
    with pytest.raises(ValueError, match=r"min_votes.*\(1, None\)"):
        dm(label_fusion="wbf").setup()
    with pytest.raises(ValueError, match=r"prepared with other settings.*label_fusion"):
        prepare_vindr(root, out, size=32, label_fusion="none")


def test_a_cache_from_before_label_fusion_is_dedup(tmp_path):
    root = _hand_root(tmp_path / "raw")
    out = tmp_path / "prepared"
    prepare_vindr(root, out, size=32)
    rows = (out / "annotations.jsonl").read_text()
    assert '"agreement"' not in rows  # dedup caches are written as before
    settings = json.loads((out / "prepare.json").read_text())
    legacy = {k: v for k, v in settings.items() if k not in ("label_fusion", "fusion_iou", "fusion_conf_type",
                                                              "min_votes")}
    (out / "prepare.json").write_text(json.dumps(legacy))
    prepare_vindr(root, out, size=32)  # the old settings resume with the defaults
    assert (out / "annotations.jsonl").read_text() == rows
    VinDrDataModule(str(out), image_size=32, decode_workers=1).setup()
    with pytest.raises(ValueError, match=r"label_fusion.*\('dedup', 'wbf'\)"):
        VinDrDataModule(str(out), image_size=32, decode_workers=1, label_fusion="wbf").setup()


@pytest.mark.parametrize(("override", "message"), [
    ("data.label_fusion=wbff", "data.label_fusion='wbff': must be one of dedup, wbf, none"),
    ("data.fusion_iou=1.5", "data.fusion_iou=1.5: must be a number in [0, 1)"),
    ("data.min_votes=0", "data.min_votes=0: must be an integer > 0 or null"),
    ("data.fusion_conf_type=max", "data.fusion_conf_type='max': must be one of avg, box_and_model_avg"),
    ("data.dedup_mode=median", "data.dedup_mode='median': must be one of medoid, mean"),
])
def test_a_wrong_fusion_setting_names_its_key_at_start_up(override, message):
    assert value_problems(compose_train()) == []
    with pytest.raises(ConfigValueError) as e:
        check_values(compose_train([override]))
    assert message in str(e.value)
    key, value = override.removeprefix("data.").split("=")
    with pytest.raises(ValueError, match=f"{key}="):  # the classes check too, for direct callers
        VinDrDataModule(".", **{key: float(value) if key == "fusion_iou" else int(value) if key == "min_votes"
                                else value})


def test_prepare_cli_fusion_flags(tmp_path, capsys):
    root = _hand_root(tmp_path / "raw")
    summary = prepare_main(["vindr", "--root", str(root), "--out", str(tmp_path / "out"), "--size", "64",
                            "--workers", "1", "--label-fusion", "wbf", "--min-votes", "2"])
    assert summary["label_fusion"] == "wbf" and summary["min_votes"] == 2
    assert summary["fusion"]["train"]["boxes_by_class"] == {NODULE: 1, EFFUSION: 1}
    assert summary["fusion"]["test"]["fusion_applied"] == "none"
    with pytest.raises(SystemExit) as e:
        prepare_main(["vindr", "--root", str(root), "--out", str(tmp_path / "bad"), "--min-votes", "0"])
    assert e.value.code == 2 and "min_votes=0" in capsys.readouterr().err
