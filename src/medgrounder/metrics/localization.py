"""LiteGPT's localization accuracy over labelled boxes (design section 7).

All rates are fractions in [0, 1]; :mod:`medgrounder.metrics.tables` prints percentages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from medgrounder.core.boxes import from_grid, iou, to_grid

__all__ = ["DEFAULT_THRESHOLDS", "localization_accuracy"]

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5)


def _key(prefix: str, t: float) -> str:
    return f"{prefix}@{t:g}"


def localization_accuracy(
    samples: Iterable[Mapping],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    plus_one: bool = False,
) -> dict:
    """LiteGPT Accuracy@t and its strict one-to-one variant.

    Each sample has ``width``, ``height``, ``gt`` = ``[(class, pixel box), ...]`` and ``pred`` =
    ``[(class, grid box 0-100), ...]``. Only boxes of the same class in the same image are
    compared. By default predicted grid boxes are mapped to pixels (:func:`from_grid`) and IoU
    is continuous in pixel space; ``plus_one=True`` reproduces LiteGPT's reference instead: the
    ground truth is mapped to the grid (:func:`to_grid`) and IoU uses the inclusive ``+1``.

    - ``acc@t``: any-match recall, the fraction of GT boxes for which some predicted box of the
      same class in the same image has IoU > t (a predicted box may hit several GT boxes).
    - ``acc_strict@t``: per image and class, the maximum one-to-one matching among pairs with
      IoU > t (:func:`scipy.optimize.linear_sum_assignment`); ``matches / (num_gt + num_pred -
      matches)``, i.e. unmatched predictions count as errors besides missed GT boxes.
    - ``acc_named@t`` (when samples carry ``named``, the set of classes the answer names): the
      hits over the GT boxes whose class the answer names (LiteGPT section 4.5.2's "only
      correctly classified findings are included"; audit A1 item 3), with ``num_gt_named``.
    - ``num_gt``, ``num_pred``: box counts. With no boxes at all every rate is 0.
    """
    hits = np.zeros(len(thresholds))
    matches = np.zeros(len(thresholds))
    num_gt = num_pred = num_named = 0
    has_named = False
    for s in samples:
        named = s.get("named")
        if named is not None:
            has_named = True
            num_named += sum(1 for c, _ in s["gt"] if c in named)
        w, h = s["width"], s["height"]
        by_class: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for c, box in s["gt"]:
            by_class[c][0].append(to_grid(box, w, h) if plus_one else tuple(box))
        for c, grid in s["pred"]:
            by_class[c][1].append(tuple(grid) if plus_one else from_grid(grid, w, h))
        for gts, preds in by_class.values():
            num_gt += len(gts)
            num_pred += len(preds)
            if not gts or not preds:
                continue
            m = np.array([[iou(g, p, plus_one=plus_one) for p in preds] for g in gts])
            for k, t in enumerate(thresholds):
                above = m > t
                hits[k] += above.any(axis=1).sum()
                rows, cols = linear_sum_assignment(above, maximize=True)
                matches[k] += above[rows, cols].sum()
    out: dict = {"num_gt": num_gt, "num_pred": num_pred}
    if has_named:
        out["num_gt_named"] = num_named
    for k, t in enumerate(thresholds):
        out[_key("acc", t)] = float(hits[k] / num_gt) if num_gt else 0.0
        if has_named:
            out[_key("acc_named", t)] = float(hits[k] / num_named) if num_named else 0.0
        denom = num_gt + num_pred - matches[k]
        out[_key("acc_strict", t)] = float(matches[k] / denom) if denom else 0.0
    return out
