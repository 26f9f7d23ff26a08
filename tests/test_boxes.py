import itertools

import pytest

from medgrounder.core.boxes import dedup_boxes, from_grid, iou, to_grid
from medgrounder.core.grammar import format_box


def test_to_grid_ends_and_half_way():
    assert to_grid((0, 0, 640, 480), 640, 480) == (0, 0, 100, 100)
    # 1/8 = 12.5 % exactly: half-way rounds up; 4/8 = 50 %.
    assert to_grid((1, 4, 8, 8), 8, 8) == (13, 50, 100, 100)
    # Out-of-image values clamp.
    assert to_grid((-5, -1, 700, 500), 640, 480) == (0, 0, 100, 100)


def test_from_grid_inverts_to_grid():
    w, h = 777, 512
    box = (123.4, 56.7, 654.3, 500.0)
    back = from_grid(to_grid(box, w, h), w, h)
    for v, b, side in zip(box, back, (w, h, w, h), strict=True):
        assert abs(v - b) <= side / 200 + 1e-9
    assert from_grid((0, 0, 100, 100), w, h) == (0, 0, w, h)
    assert from_grid((50, 25, 75, 100), 200, 400) == (100, 100, 150, 400)


def test_iou_hand_cases():
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # touching edges
    assert iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0


def test_iou_plus_one():
    # Inclusive pixels: 3 x 3 boxes overlapping in 2 x 2.
    assert iou((0, 0, 2, 2), (1, 1, 3, 3), plus_one=True) == pytest.approx(4 / 14)
    # Touching edges share one pixel column under +1.
    assert iou((0, 0, 2, 2), (2, 0, 4, 2), plus_one=True) == pytest.approx(3 / 15)
    assert iou((5, 5, 5, 5), (5, 5, 5, 5), plus_one=True) == 1.0


def test_format_box():
    assert format_box((38, 49, 82, 63)) == "{<38><49><82><63>}"


def test_dedup_chain_merges_into_one():
    a, b, c = (0, 0, 10, 10), (2, 0, 12, 10), (4, 0, 14, 10)
    assert iou(a, c) < 0.5 < iou(a, b)
    assert dedup_boxes([a, b, c]) == [(2.0, 0.0, 12.0, 10.0)]  # medoid: the middle box


def test_dedup_iou_exactly_half_keeps_both():
    a, b = (0, 0, 10, 10), (0, 0, 10, 5)
    assert iou(a, b) == 0.5
    assert dedup_boxes([a, b]) == [(0.0, 0.0, 10.0, 5.0), (0.0, 0.0, 10.0, 10.0)]


def test_dedup_two_boxes_from_one_reader_and_distinct_findings():
    # One reader drew the same finding twice; a separate finding stays separate.
    same = [(10, 10, 50, 50), (11, 10, 50, 51)]
    other = (100, 100, 120, 130)
    out = dedup_boxes([*same, other])
    assert len(out) == 2
    assert other in out


def test_dedup_order_independent():
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (30, 30, 40, 40), (2, 0, 12, 10), (31, 30, 41, 40)]
    expected = dedup_boxes(boxes)
    assert len(expected) == 2
    for perm in itertools.permutations(boxes):
        assert dedup_boxes(list(perm)) == expected
        assert dedup_boxes(list(perm), mode="mean") == dedup_boxes(boxes, mode="mean")


def test_dedup_mean_mode():
    out = dedup_boxes([(0, 0, 10, 10), (1, 1, 11, 11)], mode="mean")
    assert out == [(0.5, 0.5, 10.5, 10.5)]


def test_dedup_bad_mode_and_empty():
    assert dedup_boxes([]) == []
    with pytest.raises(ValueError, match="mode"):
        dedup_boxes([(0, 0, 1, 1)], mode="median")
