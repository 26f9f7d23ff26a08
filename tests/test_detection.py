"""Detector metrics over scored boxes (design section 7): VOC 2010 all-point AP, mAP and FROC,
cross-checked against map-boxes, pycocotools and an independent brute-force FROC."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medgrounder import score
from medgrounder.core.labels import KAGGLE_CLASS_ID
from medgrounder.metrics.detection import (
    FROC_RATES,
    average_precision,
    class_aps,
    froc,
    match,
    mean_ap,
)
from medgrounder.metrics.detection_export import coco_files, read_kaggle_csv
from medgrounder.tasks import TASKS
from medgrounder.tasks.identify import vindr_detection_boxes, vindr_detection_metrics

with contextlib.redirect_stdout(io.StringIO()):  # it prints a note when its Cython part is not built
    from map_boxes import mean_average_precision_for_boxes
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

THR = 0.4
W, H = 1000.0, 800.0


# ------------------------------------------------------------------------------ hand-made cases
def test_perfect_and_empty():
    gts = [("a", "x", (0, 0, 10, 10)), ("b", "x", (5, 5, 20, 20)), ("b", "y", (0, 0, 4, 4))]
    preds = [(i, c, b, 0.5) for i, c, b in gts]
    aps = class_aps(gts, preds)
    assert {c: a.ap for c, a in aps.items()} == {"x": 1.0, "y": 1.0} and mean_ap(aps) == 1.0
    assert class_aps([], []) == {} and mean_ap({}) == 0.0
    assert froc([], [], 0) == dict.fromkeys(FROC_RATES, 0.0)
    assert froc(gts, [], 2) == dict.fromkeys(FROC_RATES, 0.0)
    # a class with GT and no prediction scores 0 and counts; a class without GT does not count
    aps = class_aps(gts, [*preds[:2], ("a", "z", (0, 0, 1, 1), 0.9)])
    assert aps["y"].ap == 0.0 and aps["z"].ap is None and aps["z"].num_pred == 1
    assert mean_ap(aps) == pytest.approx(0.5)


def test_duplicates_are_false_positives():
    g1, g2 = (0, 0, 10, 10), (50, 50, 60, 60)
    gts = [("i", "x", g1), ("i", "x", g2)]
    preds = [("i", "x", g1, 0.9), ("i", "x", (0, 0, 10, 9), 0.8), ("i", "x", g2, 0.7)]
    order, tp = match(gts, preds)
    assert order.tolist() == [0, 1, 2] and tp.tolist() == [True, False, True]
    a = class_aps(gts, preds)["x"]
    np.testing.assert_allclose(a.recall, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(a.precision, [1.0, 0.5, 2 / 3])
    assert a.ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_ties_rank_in_input_order():
    gts = [("i", "x", (0, 0, 10, 10))]
    hit, miss = ("i", "x", (0, 0, 10, 10), 0.5), ("j", "x", (0, 0, 10, 10), 0.5)
    assert class_aps(gts, [hit, miss])["x"].ap == 1.0
    assert class_aps(gts, [miss, hit])["x"].ap == 0.5
    order, _ = match(gts, [miss, hit, ("i", "x", (0, 0, 1, 1), 0.9)])
    assert order.tolist() == [2, 0, 1]


def test_strict_threshold_and_inclusive_option():
    gts = [("i", "x", (0, 0, 10, 10))]
    preds = [("i", "x", (0, 0, 10, 4), 1.0)]  # IoU 40 / 100 = 0.4 exactly
    assert class_aps(gts, preds, 0.4)["x"].ap == 0.0
    assert class_aps(gts, preds, 0.4, inclusive=True)["x"].ap == 1.0


def test_wrong_class_and_image_do_not_match():
    gts = [("i", "x", (0, 0, 10, 10))]
    aps = class_aps(gts, [("i", "y", (0, 0, 10, 10), 0.9), ("j", "x", (0, 0, 10, 10), 0.8)])
    assert aps["x"].ap == 0.0 and aps["y"].ap is None


def test_unmatched_rule_against_voc_devkit_rule():
    g1, g2 = (0, 0, 10, 10), (0, 2, 10, 12)
    gts = [("i", "x", g1), ("i", "x", g2)]
    # the second box's best GT is g1 (IoU 0.90, taken); g2 still overlaps it by 0.74
    preds = [("i", "x", g1, 0.9), ("i", "x", (0, 0.5, 10, 10.5), 0.8)]
    assert match(gts, preds)[1].tolist() == [True, True]
    assert match(gts, preds, matching="voc")[1].tolist() == [True, False]
    with pytest.raises(ValueError, match="matching must be one of"):
        match(gts, preds, matching="coco")


def test_all_point_ap_hand_values():
    # VOC envelope: recall 0.5 at precision 1, recall 1 at 0.5 -> 0.5 + 0.5 * 0.5
    assert average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 4])) == pytest.approx(0.75)
    assert average_precision(np.array([]), np.array([])) == 0.0
    # a later, higher precision lifts the envelope before it
    assert average_precision(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 2 / 3])) == pytest.approx(2 / 3)


def test_froc_hand_case():
    # 2 images, 2 lesions; ranked: hit (0.9), FP (0.8), FP (0.7), hit (0.6)
    gts = [(0, "x", (0, 0, 10, 10)), (1, "y", (0, 0, 10, 10))]
    preds = [(0, "x", (0, 0, 10, 10), 0.9), (0, "y", (0, 0, 10, 10), 0.8), (1, "y", (50, 50, 60, 60), 0.7),
             (1, "y", (1, 1, 10, 10), 0.6)]
    # operating points (FP/image, sensitivity): (0, 0), (0, .5), (.5, .5), (1, .5), (1, 1)
    assert froc(gts, preds, 2) == {0.125: 0.5, 0.25: 0.5, 0.5: 0.5, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    # tied scores enter together: the hit tied with two FPs needs 1 FP/image
    tied = [(0, "y", (0, 0, 10, 10), 0.5), (1, "y", (50, 50, 60, 60), 0.5), (1, "y", (1, 1, 10, 10), 0.5)]
    assert froc(gts, tied, 2)[0.5] == 0.0 and froc(gts, tied, 2)[1.0] == 0.5


# ------------------------------------------------------------------------------ random cases
def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def random_case(seed, n_images=12, classes=("a", "b", "c"), ties=False, gt_everywhere=True, margin=1e-3):
    """Normalised boxes: GT 0-3 per image and class (at least one per image with
    ``gt_everywhere``, so map-boxes sees every image), predictions jittered GT boxes, duplicates
    and random boxes, distinct scores (or a few levels with ``ties``); no same-class IoU within
    ``margin`` of the threshold, where the libraries' >= and float32 differ from our >."""
    rng = np.random.default_rng(seed)
    while True:
        gts, preds = [], []
        for i in range(n_images):
            mine = []
            for c in classes:
                for _ in range(rng.integers(0, 3)):
                    x, y = rng.uniform(0, 0.7, 2)
                    mine.append((f"im{i}", c, (x, y, x + rng.uniform(0.05, 0.3), y + rng.uniform(0.05, 0.3))))
            if gt_everywhere and not mine:
                mine.append((f"im{i}", classes[0], (0.1, 0.1, 0.4, 0.5)))
            gts += mine
            for _, c, b in mine:
                for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 (a duplicate) jittered copies
                    c2 = c if rng.uniform() < 0.85 else classes[rng.integers(len(classes))]
                    x1, y1, x2, y2 = np.asarray(b) + rng.normal(0, 0.04, 4)
                    preds.append((f"im{i}", c2, (min(x1, x2), min(y1, y2), max(x1, x2) + 0.01, max(y1, y2) + 0.01)))
            for _ in range(rng.integers(0, 3)):
                x, y = rng.uniform(0, 0.7, 2)
                preds.append((f"im{i}", classes[rng.integers(len(classes))], (x, y, x + 0.2, y + 0.2)))
        n = len(preds)
        scores = rng.integers(1, 4, n) / 4 if ties else (rng.permutation(n) + 1) / (n + 1)
        preds = [(*p, float(s)) for p, s in zip(preds, scores, strict=True)]
        near = any(abs(_iou(p[2], g[2]) - THR) < margin for p in preds for g in gts if p[:2] == g[:2])
        if not near:
            return gts, preds


def pixels(gts, preds):
    def px(b):
        return (b[0] * W, b[1] * H, b[2] * W, b[3] * H)

    return [(i, c, px(b)) for i, c, b in gts], [(i, c, px(b), s) for i, c, b, s in preds]


@pytest.mark.parametrize("seed", range(8))
def test_map_matches_map_boxes(seed):
    gts, preds = random_case(seed)
    ann = np.array([[i, c, b[0], b[2], b[1], b[3]] for i, c, b in gts], dtype=object)  # XMin XMax YMin YMax
    ranked = sorted(preds, key=lambda p: -p[3])  # map-boxes matches in input order
    det = np.array([[i, c, s, b[0], b[2], b[1], b[3]] for i, c, b, s in ranked], dtype=object)
    ref_map, ref_aps = mean_average_precision_for_boxes(ann, det, iou_threshold=THR, verbose=False)
    # map-boxes follows the VOC devkit (the best GT box overall, duplicates when it is taken)
    aps = class_aps(*pixels(gts, preds), THR, matching="voc")
    assert mean_ap(aps) == pytest.approx(ref_map, abs=1e-9)
    assert {c: a.ap for c, a in aps.items() if a.ap is not None} == pytest.approx(
        {c: v[0] for c, v in ref_aps.items()}, abs=1e-9)


def coco_eval(gt: dict, results: list) -> dict[str, float]:
    """COCOeval's AP at IoU 0.4 (101 recall points, maxDets 100, area 'all') per category name
    with ground truth."""
    with contextlib.redirect_stdout(io.StringIO()):
        cgt = COCO()
        cgt.dataset = gt
        cgt.createIndex()
        ev = COCOeval(cgt, cgt.loadRes(results), "bbox")
        ev.params.iouThrs = np.array([THR])
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, :, 0, -1]  # recall points x categories
    names = {c["id"]: c["name"] for c in gt["categories"]}
    return {names[cid]: float(prec[:, k].mean()) for k, cid in enumerate(ev.params.catIds) if prec[0, k] > -1}


def ap101(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's interpolation of one PR curve: the precision envelope sampled at recall 0, 0.01, ...,
    1 (the first point with recall >= r; 0 past the last), averaged."""
    env = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    return float(np.mean([env[i] if i < len(env) else 0.0 for i in idx]))


def coco_inputs(gts, preds):
    keys = sorted({g[0] for g in gts} | {p[0] for p in preds})
    cats = sorted({g[1] for g in gts} | {p[1] for p in preds})
    return coco_files([{"key": k, "width": W, "height": H} for k in keys], cats, gts, preds)


@pytest.mark.parametrize("seed", range(8))
def test_map_against_pycocotools_differs_by_the_interpolation_only(seed):
    gts, preds = pixels(*random_case(seed, gt_everywhere=seed % 2 == 0))
    aps = class_aps(gts, preds, THR)
    ref = coco_eval(*coco_inputs(gts, preds))
    assert set(ref) == {c for c, a in aps.items() if a.ap is not None}
    for c, v in ref.items():
        a = aps[c]
        # the same PR curve: COCO's 101-point reading of ours is COCO's number
        assert v == pytest.approx(ap101(a.recall, a.precision), abs=1e-12)
        # the bound: with P the non-increasing envelope, AP_voc = integral of P over [0, 1] and
        # AP_101 = S / 1.01 with S = 0.01 * sum P(k / 100), k = 0..100. Monotony puts S in
        # [AP_voc, AP_voc + 0.01] and S / 101 in [0, 0.01], so |AP_voc - AP_101| <= 0.01
        assert abs(a.ap - v) <= 0.01 + 1e-12
    assert abs(mean_ap(aps) - np.mean(list(ref.values()))) <= 0.01 + 1e-12


@pytest.mark.parametrize(("ranked_tp", "expected"), [
    ([True, True, True], 1.0),            # precision 1 at every recall
    ([False, True, False, True], 0.5),   # the envelope is 0.5 at every recall
    ([False, False], 0.0),               # nothing found
])
def test_both_interpolations_agree_on_a_flat_envelope(ranked_tp, expected):
    n_gt = sum(ranked_tp)
    gts = [(f"g{k}", "x", (0.0, 0.0, 10.0, 10.0)) for k in range(max(n_gt, 1))]
    preds, hit = [], 0
    for k, t in enumerate(ranked_tp):
        image = f"g{hit}" if t else "fp"
        hit += t
        preds.append((image, "x", (0.0, 0.0, 10.0, 10.0), 1.0 - k / 10))
    ap = class_aps(gts, preds)["x"].ap
    assert ap == pytest.approx(expected) and coco_eval(*coco_inputs(gts, preds))["x"] == pytest.approx(expected)


def brute_force_froc(gts, preds, num_images, rates=FROC_RATES, thr=THR):
    """The independent FROC (coco-froc-analysis 0.2.15 is no reference: it pins numpy<2 and in
    use_iou mode counts a Hungarian assignment as a hit even without overlap).

    For every score threshold, match the kept predictions from scratch (highest score first,
    ties in input order, each to its best-IoU unmatched GT box of the same image and class above
    ``thr``) and keep the best sensitivity within each FP/image budget."""
    best = dict.fromkeys(rates, 0.0)
    for s in sorted({p[3] for p in preds}, reverse=True):
        kept = sorted((p for p in preds if p[3] >= s), key=lambda p: -p[3])  # sorted() is stable
        free = [list(g) for g in gts]
        hits = fps = 0
        for image, cls, box, _ in kept:
            cand = [(_iou(box, g[2]), k) for k, g in enumerate(free) if g is not None and g[0] == image and g[1] == cls]
            cand = [(v, -k) for v, k in cand if v > thr]
            if cand:
                free[-max(cand)[1]] = None
                hits += 1
            else:
                fps += 1
        for r in rates:
            if fps / num_images <= r:
                best[r] = max(best[r], hits / len(gts))
    return best


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_froc_matches_brute_force(seed, ties):
    gts, preds = random_case(100 + seed, n_images=8, ties=ties, gt_everywhere=False)
    n = 10  # two images without any box at all: their count still divides the FPs
    assert froc(gts, preds, n) == pytest.approx(brute_force_froc(gts, preds, n), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from("ab"), st.integers(0, 6), st.integers(0, 6),
                          st.integers(0, 3)), max_size=12),
       st.lists(st.tuples(st.integers(0, 2), st.sampled_from("ab"), st.integers(0, 6), st.integers(0, 6),
                          st.sampled_from([0.25, 0.5, 1.0])), max_size=12))
def test_small_grids_never_crash_and_agree(gt_spec, pred_spec):
    """Boxes on a coarse grid (exact IoU ties and IoU exactly at the threshold happen)."""
    gts = [(i, c, (x, y, x + 2 + d, y + 2 + d)) for i, c, x, y, d in gt_spec]
    preds = [(i, c, (x, y, x + 3, y + 2), s) for i, c, x, y, s in pred_spec]
    aps = class_aps(gts, preds)
    assert all(a.ap is None or 0.0 <= a.ap <= 1.0 for a in aps.values())
    assert 0.0 <= mean_ap(aps) <= 1.0
    sens = froc(gts, preds, 3)
    assert list(sens.values()) == sorted(sens.values())  # more FP allowed never loses sensitivity
    if gts:
        assert sens == pytest.approx(brute_force_froc(gts, preds, 3))


# ------------------------------------------------------------------------------ tasks and score
def id_row(i, gt, boxes, nf=None, **extra):
    """An ``[identify]`` predictions row with ``gt_boxes`` and scored boxes."""
    return {"id": str(i), "image_id": f"img{i}", "task": "identify", "prompt": "[INST] ...", "reference": "",
            "prediction": "", "image_width": W, "image_height": H, "gt_boxes": [[c, *b] for c, b in gt],
            "prediction_boxes": [{"label": c, "box": list(b), "score": s} for c, b, s in boxes],
            "no_finding_score": nf, **extra}


def hand_rows():
    box = (100.0, 100.0, 300.0, 300.0)
    return [id_row(0, [("Cardiomegaly", box)], [("Cardiomegaly", box, 0.9)], nf=0.1),
            id_row(1, [], [], nf=0.8),
            id_row(2, [], [("Nodule/Mass", (0.0, 0.0, 50.0, 50.0), 0.3)], nf=0.4)]


def test_vindr_map_scores_no_finding_as_kaggle_does():
    m = vindr_detection_metrics(hand_rows())
    # No finding: GT on rows 1, 2; ranked 0.8 (row 1), 0.4 (row 2), 0.1 (row 0, a false positive)
    assert m["detection/ap@0.4/No finding"] == 1.0 and m["detection/ap@0.4/Cardiomegaly"] == 1.0
    assert "detection/ap@0.4/Nodule/Mass" not in m  # no ground truth: not a class of the mean
    assert m["detection/map@0.4"] == 1.0
    # constant scores: only row 1 (no box) predicts No finding -> recall 1/2 at precision 1
    assert m["detection/constant/ap@0.4/No finding"] == 0.5 and m["detection/constant/map@0.4"] == 0.75
    # FROC over the one lesion, 3 images: the hit ranks first; with constant scores the false
    # positive (1/3 per image) comes with it
    assert all(m[f"detection/froc/sens@{r:g}"] == 1.0 for r in FROC_RATES) and m["detection/froc/mean"] == 1.0
    assert [m[f"detection/constant/froc/sens@{r:g}"] for r in FROC_RATES] == [0, 0, 1, 1, 1, 1, 1]
    assert m["detection/constant/froc/mean"] == pytest.approx(5 / 7)
    assert (m["detection/num_images"], m["detection/num_gt"], m["detection/num_pred"]) == (3, 1, 2)


def test_vindr_no_finding_without_a_score_falls_back_to_the_scoreless_rule():
    rows = hand_rows()
    rows[1]["no_finding_score"] = None  # row 1 has no box: its No finding scores 1.0
    rows[2].pop("no_finding_score")     # row 2 has a box: no No finding prediction
    _, preds = vindr_detection_boxes(rows)
    assert [p for p in preds if p[1] == "No finding"] == [(0, "No finding", (0, 0, 1, 1), 0.1),
                                                           (1, "No finding", (0, 0, 1, 1), 1.0)]
    assert vindr_detection_metrics(rows)["detection/ap@0.4/No finding"] == 0.5


def test_rows_without_boxes_have_no_detection_keys_and_a_mix_is_refused():
    rows = hand_rows()
    for r in rows:
        r.pop("prediction_boxes")
    assert vindr_detection_metrics(rows) == {} and not any(k.startswith("detection/") for k in
                                                           TASKS["identify"].score(rows, text=False))
    rows = hand_rows()
    rows[1].pop("prediction_boxes")
    with pytest.raises(ValueError, match="row '1' has no prediction_boxes while 2 of 3 rows have them"):
        vindr_detection_metrics(rows)


def refer_row(i, category, gt, boxes):
    return {"id": str(i), "image_id": f"img{i}", "task": "refer", "prompt": "[INST] ...", "prediction": "",
            "category": category, "gt_boxes": [list(b) for b in gt], "image_width": W, "image_height": H,
            "prediction_boxes": [{"label": "", "box": list(b), "score": s} for b, s in boxes]}


def refer_rows():
    g, small = (0.0, 0.0, 100.0, 100.0), (10.0, 10.0, 50.0, 50.0)
    return [refer_row(0, "Edema", [g], [((0.0, 0.0, 100.0, 55.0), 0.9)]),   # IoU 0.55
            refer_row(1, "Edema", [g], [((0.0, 0.0, 100.0, 45.0), 0.8)]),   # IoU 0.45
            refer_row(2, "Pneumonia", [small], [((500.0, 500.0, 600.0, 600.0), 0.2), (small, 0.95)])]


def test_refer_ap_per_category_at_two_thresholds():
    m = TASKS["refer"].score(refer_rows())
    assert m["detection/ap@0.4/Edema"] == 1.0 and m["detection/ap@0.5/Edema"] == 0.5
    assert m["detection/ap@0.4/Pneumonia"] == 1.0  # the exact box ranks first by its score
    assert (m["detection/map@0.4"], m["detection/map@0.5"]) == (1.0, 0.75)
    # constant scores: generation order puts the far box first
    assert m["detection/constant/ap@0.4/Pneumonia"] == 0.5
    assert (m["detection/constant/map@0.4"], m["detection/constant/map@0.5"]) == (0.75, 0.5)
    assert (m["detection/num_gt"], m["detection/num_pred"]) == (3, 4)
    table = TASKS["refer"].report(m, label="model", detailed=True)
    assert "| model, box confidence | 1.000 | 0.750 |" in table
    assert "| model, constant scores (generation order) | 0.750 | 0.500 |" in table


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_score_cli_writes_the_detection_keys_and_table(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "p.jsonl", hand_rows())
    out = tmp_path / "m.json"
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["detection/map@0.4"] == 1.0 and m["detection/constant/map@0.4"] == 0.75
    assert {f"detection/froc/sens@{r}" for r in ("0.125", "0.25", "0.5", "1", "2", "4", "8")} <= set(m)
    stdout = capsys.readouterr().out
    assert "| model, box confidence | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |" in stdout
    assert "| model, constant scores (generation order) | 0.750 | 0.000 | 0.000 | 1.000 |" in stdout
    assert "| No finding | 1.000 | 0.500 |" in stdout
    assert "| detection/map@0.4 | 1.0000 |" in stdout


@pytest.mark.parametrize(("value", "message"), [
    ("boxes", "prediction_boxes must be a list of boxes, got str"),
    ([["Cardiomegaly", 1, 2, 3, 4]], "prediction_boxes[0] must be an object with label, box and score, got list"),
    ([{"label": 3, "box": [0, 0, 1, 1], "score": 0.5}], "prediction_boxes[0].label must be a string, got 3"),
    ([{"label": "ILD", "box": [0, 0, 1], "score": 0.5}], "prediction_boxes[0].box must be [x1, y1, x2, y2] of 4 finite"),
    ([{"label": "ILD", "box": [0, 0, 1, "1"], "score": 0.5}], "prediction_boxes[0].box must be [x1, y1, x2, y2]"),
    ([{"label": "ILD", "box": [5, 0, 1, 1], "score": 0.5}], "prediction_boxes[0].box must have x1 <= x2 and y1 <= y2"),
    ([{"label": "ILD", "box": [0, 0, 1, 1], "score": 1.5}], "prediction_boxes[0].score must be a finite number in [0, 1], got 1.5"),
    ([{"label": "ILD", "box": [0, 0, 1, 1]}], "prediction_boxes[0].score must be a finite number in [0, 1], got None"),
])
def test_malformed_prediction_boxes_are_refused_naming_line_and_field(tmp_path, capsys, value, message):
    rows = hand_rows()
    rows[1]["prediction_boxes"] = value
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    err = capsys.readouterr().err
    assert f"{pred}:2: {message}" in err and "Traceback" not in err


def test_bad_no_finding_score_nan_score_and_a_mix_are_refused(tmp_path, capsys):
    rows = hand_rows()
    rows[2]["no_finding_score"] = -0.1
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    assert f"{pred}:3: no_finding_score must be a finite number in [0, 1] or null, got -0.1" in capsys.readouterr().err
    lines = [json.dumps(r) for r in hand_rows()]
    lines[0] = lines[0].replace('"score": 0.9', '"score": NaN')
    pred.write_text("\n".join(lines) + "\n")
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    assert f"{pred}:1: prediction_boxes[0].score must be a finite number in [0, 1], got nan" in capsys.readouterr().err
    rows = hand_rows()
    rows[2].pop("prediction_boxes")
    write_jsonl(pred, rows)
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify"]) == 1
    assert f"{pred}:3: no prediction_boxes while 2 of 3 rows have them (first on line 1)" in capsys.readouterr().err


LABELS = ("Cardiomegaly", "Aortic enlargement", "Lung cavity")  # Lung cavity: not one of Kaggle's 14


def random_identify_rows(seed):
    gts, preds = pixels(*random_case(seed, classes=LABELS, gt_everywhere=False))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(12):
        key = f"im{i}"
        rows.append(id_row(i, [(c, b) for k, c, b in gts if k == key], [(c, b, s) for k, c, b, s in preds if k == key],
                           nf=float(rng.uniform(0.001, 0.999)) if i % 4 else None))
    # two normal images for sure: one with a false box, one with none
    rows += [id_row(12, [], [("Cardiomegaly", (10.0, 20.0, 300.0, 400.0), 0.0123)], nf=0.61), id_row(13, [], [])]
    return rows


@pytest.mark.parametrize("seed", range(3))
def test_coco_export_evaluates_with_pycocotools(tmp_path, seed):
    rows = random_identify_rows(seed)
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "exp" / "vindr.json"
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify", "--out", str(tmp_path / "m.json"),
                       "--export", "coco", "--export-out", str(out)]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    results = json.loads(out.read_text())
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in results)
    with contextlib.redirect_stdout(io.StringIO()):
        cgt = COCO(str(out.with_name("vindr.gt.json")))
        cgt.loadRes(str(out))  # loadable as COCO results
    ref = coco_eval(json.loads(out.with_name("vindr.gt.json").read_text()), results)
    ours = {k.removeprefix("detection/ap@0.4/"): v for k, v in m.items() if k.startswith("detection/ap@0.4/")}
    assert set(ref) == set(ours) and "No finding" in ours
    for c in ours:
        assert abs(ours[c] - ref[c]) <= 0.01 + 1e-12
    assert abs(m["detection/map@0.4"] - np.mean(list(ref.values()))) <= 0.01 + 1e-12
    info = json.loads(out.with_name("vindr.settings.json").read_text())
    assert (info["iou_threshold"], info["iou_rule"]) == (0.4, ">") and "all-point" in info["interpolation"]
    assert info["categories"]["1"] == "Aortic enlargement" and info["categories"]["23"] == "No finding"
    assert info["images"][3] == {"coco_image_id": 4, "row": 3, "id": "3", "image_id": "img3"}


def test_kaggle_export_round_trips(tmp_path):
    rows = random_identify_rows(0)
    pred = write_jsonl(tmp_path / "p.jsonl", rows)
    assert score.main(["--predictions", str(pred), "--task", "vindr_identify", "--export", "kaggle"]) == 0
    sub = read_kaggle_csv((tmp_path / "p.kaggle.csv").read_text())
    assert list(sub) == [r["image_id"] for r in rows]
    dropped = 0
    for r in rows:
        want = [(KAGGLE_CLASS_ID[b["label"]], b["score"], *b["box"]) for b in r["prediction_boxes"]
                if b["label"] in KAGGLE_CLASS_ID]
        dropped += len(r["prediction_boxes"]) - len(want)
        if r["no_finding_score"] is not None:
            want.append((14, r["no_finding_score"], 0, 0, 1, 1))
        elif not r["prediction_boxes"]:
            want.append((14, 1.0, 0, 0, 1, 1))
        assert sub[r["image_id"]] == want  # exact: numbers are written as shortest round-trip repr
    info = json.loads((tmp_path / "p.kaggle.settings.json").read_text())
    assert dropped > 0 and info["dropped_labels"] == {"Lung cavity": dropped} and info["num_dropped"] == dropped
    assert info["class_ids"]["14"] == "No finding" and info["class_ids"]["3"] == "Cardiomegaly"
    assert "\nimg13,14 1 0 0 1 1\n" in (tmp_path / "p.kaggle.csv").read_text()  # the scoreless no-finding line


def test_refer_coco_export_and_usage_errors(tmp_path, capsys):
    pred = write_jsonl(tmp_path / "r.jsonl", refer_rows())
    assert score.main(["--predictions", str(pred), "--task", "mscxr_refer", "--export", "coco"]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        cgt = COCO(str(tmp_path / "r.coco.gt.json"))
        cgt.loadRes(str(tmp_path / "r.coco.json"))
    gt = json.loads((tmp_path / "r.coco.gt.json").read_text())
    assert [c["name"] for c in gt["categories"]][:2] == ["Pneumonia", "Pneumothorax"] and len(gt["images"]) == 3
    ref = coco_eval(gt, json.loads((tmp_path / "r.coco.json").read_text()))
    assert ref == pytest.approx({"Edema": 1.0, "Pneumonia": 1.0})
    with pytest.raises(SystemExit) as e:
        score.main(["--predictions", str(pred), "--task", "mscxr_refer", "--export", "kaggle"])
    assert e.value.code == 2 and "--task mscxr_refer has no --export kaggle" in capsys.readouterr().err
    rows = refer_rows()
    for r in rows:
        r.pop("prediction_boxes")
    write_jsonl(pred, rows)
    assert score.main(["--predictions", str(pred), "--task", "mscxr_refer", "--export", "coco"]) == 1
    assert "no row carries prediction_boxes: nothing to export" in capsys.readouterr().err
