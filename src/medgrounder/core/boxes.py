"""Box geometry shared by data and evaluation (the answer text of a box is in :mod:`medgrounder.core.grammar`).

Boxes are ``(x1, y1, x2, y2)`` in original-image pixels unless a name says ``grid``: the
model's 0-100 integer grid on the original image (LiteGPT section 4.2, design section 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]
GridBox = tuple[int, int, int, int]


def iou(a: Sequence[float], b: Sequence[float], plus_one: bool = False) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes.

    ``plus_one`` reproduces the reference code's inclusive-pixel convention (``x2 - x1 + 1``),
    which LiteGPT applies on the 0-100 grid; the default is the continuous definition.
    """
    e = 1.0 if plus_one else 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0]) + e
    ih = min(a[3], b[3]) - max(a[1], b[1]) + e
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    area_a = max(a[2] - a[0] + e, 0.0) * max(a[3] - a[1] + e, 0.0)
    area_b = max(b[2] - b[0] + e, 0.0) * max(b[3] - b[1] + e, 0.0)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5)


def to_grid(box: Sequence[float], width: float, height: float) -> GridBox:
    """Pixels -> 0-100 grid of the original image: ``round_half_up(x / width * 100)``,
    clamped to [0, 100]. ``x = 0`` maps to 0 and ``x = width`` to 100."""
    x1, y1, x2, y2 = box
    vals = (x1 / width, y1 / height, x2 / width, y2 / height)
    return tuple(min(100, max(0, _round_half_up(v * 100))) for v in vals)  # type: ignore[return-value]


def from_grid(grid: Sequence[float], width: float, height: float) -> Box:
    """0-100 grid -> pixels of the original image (the inverse of :func:`to_grid` up to rounding)."""
    x1, y1, x2, y2 = grid
    return (x1 / 100 * width, y1 / 100 * height, x2 / 100 * width, y2 / 100 * height)


def dedup_boxes(boxes: Sequence[Sequence[float]], thr: float = 0.5, mode: str = "medoid") -> list[Box]:
    """Collapse boxes of one class in one image whose pairwise IoU exceeds ``thr``.

    Overlap is transitive: boxes are grouped into connected components of the graph whose
    edges are pairs with IoU strictly greater than ``thr`` (so IoU exactly 0.5 keeps both, and
    a chain A~B~C is one finding even if IoU(A, C) <= thr). Each component becomes one box:

    - ``medoid`` (default, the paper keeps one of the drawn boxes): the member with the largest
      summed IoU to the other members; ties go to the smallest ``(x1, y1, x2, y2)``.
    - ``mean``: the coordinate-wise mean of the members.

    The output is sorted by ``(x1, y1, x2, y2)`` and does not depend on the input order.
    """
    if mode not in ("medoid", "mean"):
        raise ValueError(f"dedup mode must be 'medoid' or 'mean', got {mode!r}")
    if len(boxes) < 2:  # most classes of an image: nothing to merge
        return [tuple(map(float, b)) for b in boxes]  # type: ignore[misc]
    items = sorted(tuple(map(float, b)) for b in boxes)
    n = len(items)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    overlap = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            v = iou(items[i], items[j])
            overlap[i][j] = overlap[j][i] = v
            if v > thr:
                parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out: list[Box] = []
    for members in groups.values():
        if len(members) == 1:
            out.append(items[members[0]])  # type: ignore[arg-type]
        elif mode == "mean":
            out.append(tuple(sum(items[m][k] for m in members) / len(members) for k in range(4)))  # type: ignore[arg-type]
        elif mode == "medoid":
            best = max(members, key=lambda m: (sum(overlap[m][o] for o in members), [-v for v in items[m]]))
            out.append(items[best])  # type: ignore[arg-type]
    return sorted(out)
