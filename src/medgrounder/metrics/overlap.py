"""Overlap of box unions as masks: PFMVG's IoU and Dice (design section 7), exact in continuous
pixel coordinates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["box_iou_dice", "pixel_boxes", "union_overlap"]


def pixel_boxes(boxes: Iterable[Sequence]) -> list[tuple[float, float, float, float]]:
    """``[x1, y1, x2, y2]`` or ``[name, x1, y1, x2, y2]`` items -> ordered float boxes."""
    out = []
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in (b[1:5] if isinstance(b[0], str) else b[:4]))
        out.append((min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return out


def _merged(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float, float]]:
    """Intervals ``[lo, hi)`` -> their union as sorted disjoint intervals."""
    out: list[list[float]] = []
    for a, b in sorted(zip(lo.tolist(), hi.tolist(), strict=True)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        elif b > a:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _common_length(p: list[tuple[float, float]], q: list[tuple[float, float]]) -> float:
    """Length of the intersection of two sorted disjoint interval lists (two pointers)."""
    i = j = 0
    total = 0.0
    while i < len(p) and j < len(q):
        total += max(0.0, min(p[i][1], q[j][1]) - max(p[i][0], q[j][0]))
        if p[i][1] < q[j][1]:
            i += 1
        else:
            j += 1
    return total


def union_overlap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """``(area(A), area(B), area(A ∩ B))`` where A and B are the unions of two lists of
    ``x1, y1, x2, y2`` boxes, as continuous masks (exact; no rasterisation).

    A sweep over the vertical slabs between consecutive box edges: in each slab the boxes that
    span it cover a union of y-intervals. Memory grows with the number of boxes, not its square
    (a grid of cells at every edge would hold ``(2N)^2`` cells). For integer pixel boxes this
    equals counting pixels of the masks ``[y1:y2, x1:x2]``.
    """
    if not len(a) and not len(b):
        return 0.0, 0.0, 0.0
    arr = {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in (("a", a), ("b", b))}
    xs = np.unique(np.concatenate([arr["a"][:, [0, 2]].ravel(), arr["b"][:, [0, 2]].ravel()]))
    area_a = area_b = inter = 0.0
    for x0, x1 in zip(xs[:-1].tolist(), xs[1:].tolist(), strict=True):
        spans = {}
        for k, bx in arr.items():
            on = (bx[:, 0] <= x0) & (bx[:, 2] >= x1)
            spans[k] = _merged(bx[on, 1], bx[on, 3])
        width = x1 - x0
        area_a += width * sum(hi - lo for lo, hi in spans["a"])
        area_b += width * sum(hi - lo for lo, hi in spans["b"])
        inter += width * _common_length(spans["a"], spans["b"])
    return area_a, area_b, inter


def box_iou_dice(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]]) -> tuple[float, float]:
    """IoU and Dice between the union of the predicted boxes and the union of the ground-truth
    boxes (pixels): ``|P ∩ G| / |P ∪ G|`` and ``2 |P ∩ G| / (|P| + |G|)``; 0 when a side is empty."""
    if not pred or not gt:
        return 0.0, 0.0
    area_p, area_g, inter = union_overlap(pred, gt)
    union = area_p + area_g - inter
    return (inter / union if union > 0 else 0.0), (2 * inter / (area_p + area_g) if area_p + area_g > 0 else 0.0)
