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


def union_overlap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """``(area(A), area(B), area(A ∩ B))`` where A and B are the unions of two lists of
    ``x1, y1, x2, y2`` boxes, as continuous masks (exact; no rasterisation).

    The plane is cut at every box edge; each cell is inside A (B) when some box of A (B) covers
    it. For integer pixel boxes this equals counting pixels of the masks ``[y1:y2, x1:x2]``.
    """
    boxes = [*a, *b]
    if not boxes:
        return 0.0, 0.0, 0.0
    xs = np.unique([v for bx in boxes for v in (bx[0], bx[2])])
    ys = np.unique([v for bx in boxes for v in (bx[1], bx[3])])
    cell = np.outer(np.diff(ys), np.diff(xs))  # [ny - 1, nx - 1] cell areas

    def mask(bs):
        m = np.zeros(cell.shape, dtype=bool)
        for x1, y1, x2, y2 in bs:
            m[np.searchsorted(ys, y1) : np.searchsorted(ys, y2), np.searchsorted(xs, x1) : np.searchsorted(xs, x2)] = True
        return m

    ma, mb = mask(a), mask(b)
    return float(cell[ma].sum()), float(cell[mb].sum()), float(cell[ma & mb].sum())


def box_iou_dice(pred: Sequence[Sequence[float]], gt: Sequence[Sequence[float]]) -> tuple[float, float]:
    """IoU and Dice between the union of the predicted boxes and the union of the ground-truth
    boxes (pixels): ``|P ∩ G| / |P ∪ G|`` and ``2 |P ∩ G| / (|P| + |G|)``; 0 when a side is empty."""
    if not pred or not gt:
        return 0.0, 0.0
    area_p, area_g, inter = union_overlap(pred, gt)
    union = area_p + area_g - inter
    return (inter / union if union > 0 else 0.0), (2 * inter / (area_p + area_g) if area_p + area_g > 0 else 0.0)
