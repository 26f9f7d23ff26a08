"""PFMVG metrics (tables 1-4): IoU / Dice of box unions, per category, mean and weighted."""

from __future__ import annotations

import numpy as np
import pytest

from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.metrics.overlap import box_iou_dice, union_overlap
from medgrounder.tasks.refer import mscxr_refer_metrics


def raster(boxes, size=64):
    m = np.zeros((size, size), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        m[y1:y2, x1:x2] = True
    return m


def test_hand_computed_cases():
    # Identical, disjoint, half overlap.
    assert box_iou_dice([(0, 0, 10, 10)], [(0, 0, 10, 10)]) == (1.0, 1.0)
    assert box_iou_dice([(0, 0, 10, 10)], [(20, 20, 30, 30)]) == (0.0, 0.0)
    iou, dice = box_iou_dice([(0, 0, 10, 10)], [(5, 0, 15, 10)])  # inter 50, union 150
    assert iou == pytest.approx(1 / 3) and dice == pytest.approx(0.5)
    # Two predicted boxes covering the one GT box exactly: their union is the GT.
    assert box_iou_dice([(0, 0, 5, 10), (5, 0, 10, 10)], [(0, 0, 10, 10)]) == (1.0, 1.0)
    # Overlapping predicted boxes are not counted twice: union area 100 + 100 - 25 = 175.
    assert union_overlap([(0, 0, 10, 10), (5, 5, 15, 15)], [(0, 0, 15, 15)]) == (175.0, 225.0, 175.0)
    # GT is two boxes, prediction one of them: IoU 1/2, Dice 2 * 100 / 300.
    iou, dice = box_iou_dice([(0, 0, 10, 10)], [(0, 0, 10, 10), (20, 0, 30, 10)])
    assert iou == pytest.approx(0.5) and dice == pytest.approx(2 / 3)
    assert box_iou_dice([], [(0, 0, 1, 1)]) == (0.0, 0.0)
    # Non-integer (grid -> pixel) coordinates: exact areas.
    iou, _ = box_iou_dice([(0.5, 0, 2.5, 1)], [(1.5, 0, 3.5, 1)])
    assert iou == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_union_overlap_equals_pixel_masks(seed):
    rng = np.random.default_rng(seed)

    def boxes(k):
        xy = rng.integers(0, 64, size=(k, 4))
        return [(min(a, c), min(b, d), max(a, c), max(b, d)) for a, b, c, d in xy]

    a, b = boxes(rng.integers(1, 5)), boxes(rng.integers(1, 5))
    ma, mb = raster(a), raster(b)
    assert union_overlap(a, b) == (ma.sum(), mb.sum(), (ma & mb).sum())
    iou, _dice = box_iou_dice(a, b)
    if (ma | mb).any():
        assert iou == pytest.approx((ma & mb).sum() / (ma | mb).sum())


def row(category, prediction, gt_boxes, w=200, h=100):
    return {"category": category, "prediction": prediction, "gt_boxes": gt_boxes, "image_width": w, "image_height": h}


def test_mean_vs_weighted_as_pfmvg():
    # 3 Edema samples with IoU 1, 1, 0 (one invalid) and 1 Pneumonia sample with IoU 0.5.
    rows = [
        row("Edema", "{<0><0><50><50>}", [[0, 0, 100, 50]]),
        row("Edema", "{<0><0><25><50>}<delim>{<25><0><50><50>}.", [[0, 0, 100, 50]]),
        row("Edema", "the edema is here", [[0, 0, 100, 50]]),
        row("Pneumonia", "{ <0> <0> <50> <100> }", [["Pneumonia", 0, 0, 50, 100], [150, 0, 200, 100]]),
    ]
    m = mscxr_refer_metrics(rows)
    assert m["num_samples"] == 4 and m["valid_rate"] == 0.75
    assert m["num/Edema"] == 3 and m["valid_rate/Edema"] == pytest.approx(2 / 3)
    assert m["iou/Edema"] == pytest.approx(2 / 3) and m["dice/Edema"] == pytest.approx(2 / 3)
    # Pneumonia: pred 0-100 px wide vs GT union (0-50) + (150-200): inter 5000, union 15000.
    assert m["iou/Pneumonia"] == pytest.approx(1 / 3)
    assert m["dice/Pneumonia"] == pytest.approx(2 * 5000 / (10000 + 10000))
    assert m["iou/mean"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # over categories
    assert m["iou/weighted"] == pytest.approx((1 + 1 + 0 + 1 / 3) / 4)  # over samples
    assert m["dice/weighted"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert [k for k in m if k.startswith("iou/")][:2] == ["iou/Pneumonia", "iou/Edema"]  # paper order
    assert set(MSCXR_CATEGORIES) >= {"Edema", "Pneumonia"}
    assert mscxr_refer_metrics([])["iou/mean"] == 0.0
