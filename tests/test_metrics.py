"""Metrics: sklearn cross-check, hand-computed localization cases, baselines, row metrics."""

import random

import numpy as np
import pytest
from sklearn.metrics import classification_report

from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS
from medgrounder.metrics.classification import multilabel_report
from medgrounder.metrics.localization import localization_accuracy
from medgrounder.tasks.identify import identify_answer, mean_box_baseline, vindr_identify_metrics
from medgrounder.tasks.vqa import vindr_vqa_metrics, vqa_answer

SK_AVG = {
    "micro": "micro avg",
    "macro": "macro avg",
    "weighted": "weighted avg",
    "samples": "samples avg",
}


def sklearn_flat(y_true, y_pred, labels):
    def indicator(sets):
        return np.array([[name in s for name in labels] for s in sets], dtype=int)

    rep = classification_report(
        indicator(y_true),
        indicator(y_pred),
        labels=list(range(len(labels))),
        target_names=list(labels),
        output_dict=True,
        zero_division=0,
    )
    out = {}
    for ours, theirs in [(n, n) for n in labels] + list(SK_AVG.items()):
        for k, sk in (
            ("precision", "precision"),
            ("recall", "recall"),
            ("f1", "f1-score"),
            ("support", "support"),
        ):
            out[f"{ours}/{k}"] = rep[theirs][sk]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_multilabel_report_matches_sklearn(seed):
    rng = random.Random(seed)
    labels = list(LOCAL_LABELS[:8])
    never = labels[-1]  # zero support and zero predictions
    rare = labels[-2]  # predicted but never true
    pool = labels[:-2]
    n = rng.randint(1, 60)
    y_true = [set(rng.sample(pool, rng.randint(0, 3))) for _ in range(n)]
    y_pred = [set(rng.sample([*pool, rare], rng.randint(0, 3))) for _ in range(n)]
    y_pred[0] |= {"not a label"}  # ignored
    ours = multilabel_report(y_true, y_pred, labels)
    theirs = sklearn_flat(y_true, y_pred, labels)
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v, abs=1e-12), k
    assert ours[f"{never}/support"] == 0 and ours[f"{never}/f1"] == 0.0
    assert isinstance(ours["micro/support"], int)


def test_multilabel_report_no_support_matches_sklearn():
    y_true = [set(), set(), set()]
    y_pred = [{"COPD"}, set(), {"COPD", "Pneumonia"}]
    ours = multilabel_report(y_true, y_pred, GLOBAL_LABELS)
    for k, v in sklearn_flat(y_true, y_pred, GLOBAL_LABELS).items():
        assert ours[k] == pytest.approx(v), k


def sample(gt, pred, w=100, h=100):
    return {"width": w, "height": h, "gt": gt, "pred": pred}


def test_exact_hit_maps_grid_to_pixels():
    s = sample([("ILD", (10, 20, 50, 100))], [("ILD", (10, 10, 50, 50))], w=100, h=200)
    m = localization_accuracy([s])
    assert m == {
        "num_gt": 1,
        "num_pred": 1,
        "acc@0.3": 1.0,
        "acc@0.4": 1.0,
        "acc@0.5": 1.0,
        "acc_strict@0.3": 1.0,
        "acc_strict@0.4": 1.0,
        "acc_strict@0.5": 1.0,
    }


def test_wrong_class_misses():
    m = localization_accuracy([sample([("ILD", (0, 0, 10, 10))], [("Edema", (0, 0, 10, 10))])])
    assert m["acc@0.3"] == 0.0 and m["acc_strict@0.3"] == 0.0
    assert m["num_gt"] == 1 and m["num_pred"] == 1


def test_threshold_is_strict_inequality():
    gt = [("ILD", (0, 0, 1000, 1000))]
    at = localization_accuracy([sample(gt, [("ILD", (0, 0, 100, 50))], 1000, 1000)], (0.49, 0.5))
    assert at["acc@0.49"] == 1.0 and at["acc@0.5"] == 0.0  # IoU exactly 0.5
    above = localization_accuracy([sample(gt, [("ILD", (0, 0, 100, 51))], 1000, 1000)], (0.5,))
    assert above["acc@0.5"] == 1.0  # IoU 0.51


def test_any_match_vs_strict_with_duplicates_and_false_positives():
    gt = [("ILD", (0, 0, 10, 10)), ("ILD", (50, 50, 60, 60))]
    pred = [("ILD", (0, 0, 10, 10)), ("ILD", (0, 0, 10, 10)), ("ILD", (80, 80, 90, 90))]
    m = localization_accuracy([sample(gt, pred)])
    assert m["acc@0.5"] == 0.5  # one of two GT boxes found
    assert m["acc_strict@0.5"] == pytest.approx(1 / (2 + 3 - 1))  # 1 match, 2 GT, 3 preds

    # One predicted box covering two GT boxes: any-match counts both, strict only one.
    gt = [("ILD", (0, 0, 10, 10)), ("ILD", (0, 0, 10, 9))]
    m = localization_accuracy([sample(gt, [("ILD", (0, 0, 10, 10))])])
    assert m["acc@0.5"] == 1.0
    assert m["acc_strict@0.5"] == pytest.approx(1 / (2 + 1 - 1))


def test_strict_maximises_the_number_of_matches():
    # IoU(A, p) = 1, IoU(A, q) = IoU(B, p) = 0.4, IoU(B, q) = 0. The IoU-sum optimum pairs A-p
    # only; counting pairs above t pairs A-q and B-p.
    gt = [("ILD", (0, 0, 10, 10)), ("ILD", (0, 6, 10, 10))]
    pred = [("ILD", (0, 0, 10, 10)), ("ILD", (0, 0, 10, 4))]
    m = localization_accuracy([sample(gt, pred)], (0.35,))
    assert m["acc@0.35"] == 1.0 and m["acc_strict@0.35"] == 1.0


def test_plus_one_compat():
    s = sample([("ILD", (0, 0, 10, 10))], [("ILD", (0, 0, 10, 5))])
    assert localization_accuracy([s], (0.5,))["acc@0.5"] == 0.0  # IoU 0.5
    assert localization_accuracy([s], (0.5,), plus_one=True)["acc@0.5"] == 1.0  # 66 / 121
    # GT is rounded to the grid first: 14 px of 1000 -> grid 1, same as the prediction.
    s = sample([("ILD", (0, 0, 14, 1000))], [("ILD", (0, 0, 1, 100))], 1000, 1000)
    assert localization_accuracy([s], (0.75,))["acc@0.75"] == 0.0  # 10 / 14
    assert localization_accuracy([s], (0.75,), plus_one=True)["acc@0.75"] == 1.0


def test_no_boxes_gives_zero():
    m = localization_accuracy([sample([], [])])
    assert m["acc@0.3"] == 0.0 and m["acc_strict@0.3"] == 0.0 and m["num_gt"] == 0


def identify_row(gt_grid, prediction, w=100, h=100, **extra):
    return {
        "id": "x",
        "image_id": "x",
        "task": "vindr_identify",
        "prompt": "",
        "reference": identify_answer(gt_grid),
        "prediction": prediction,
        "image_width": w,
        "image_height": h,
        **extra,
    }


def test_mean_box_baseline():
    train = [("ILD", (0, 0, 10, 10)), ("ILD", (10, 10, 20, 20)), ("Edema", (50, 50, 60, 60))]
    rows = [
        identify_row([], "", gt_boxes=[["ILD", 5, 5, 15, 15], ["Cardiomegaly", 10, 10, 35, 35]])
    ]
    m = mean_box_baseline(train, rows, (0.3,))
    # ILD -> mean (5, 5, 15, 15): hit; Cardiomegaly unseen -> mean of all (20, 20, 30, 30): IoU 0.16.
    assert m == {"num_gt": 2, "num_pred": 2, "acc@0.3": 0.5, "acc_strict@0.3": pytest.approx(1 / 3)}
    # GT from the reference when there are no gt_boxes (grid -> pixels of a 200x200 image).
    rows = [identify_row([("ILD", (5, 5, 15, 15))], "", 200, 200)]
    assert mean_box_baseline(train, rows, (0.9,))["acc@0.9"] == 1.0
    with pytest.raises(ValueError):
        mean_box_baseline([], rows)


def test_identify_metrics_score_the_pairs_of_invalid_answers():
    """Audit A1 item 1: an invalid answer is no longer scored as empty; its well-formed pairs
    count and valid_rate says it was invalid."""
    gt = [("Cardiomegaly", (38, 49, 82, 63))]
    good = identify_answer(gt)
    rows = [
        identify_row(gt, good),
        identify_row(gt, good + " garbage"),
        identify_row(gt, "garbage"),
        identify_row([], "No findings"),
    ]
    m = vindr_identify_metrics(rows)
    assert m["num_samples"] == 4 and m["valid_rate"] == pytest.approx(2 / 4)
    assert m["acc@0.5"] == pytest.approx(2 / 3) and m["num_gt"] == 3 and m["num_pred"] == 2
    assert m["local/Cardiomegaly/recall"] == pytest.approx(2 / 3) and m["local/Cardiomegaly/precision"] == 1.0
    assert m["local/Cardiomegaly/support"] == 3


def vqa_row(truth, prediction):
    return {
        "id": "x",
        "task": "vindr_vqa",
        "reference": vqa_answer(truth),
        "prediction": prediction,
    }


def test_vqa_metrics_binary_task():
    rows = [
        vqa_row(["Pneumonia"], vqa_answer(["Pneumonia"])),  # finding, right
        vqa_row(["Pneumonia"], vqa_answer([])),  # finding, predicted no finding
        vqa_row([], vqa_answer([])),  # no finding, right
        vqa_row([], "no pneumonia"),  # invalid: counted as the wrong decision
    ]
    m = vindr_vqa_metrics(rows)
    assert m["valid_rate"] == 0.75
    assert m["finding/accuracy"] == 0.5
    assert (
        m["finding/precision"] == 0.5 and m["finding/recall"] == 0.5 and m["finding/support"] == 2
    )
    assert m["no_finding/precision"] == 0.5 and m["no_finding/recall"] == 0.5
    assert m["global/Pneumonia/recall"] == 0.5 and m["global/No finding/recall"] == 0.5
    assert m["global/No finding/support"] == 2
