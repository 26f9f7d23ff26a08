"""Detector metrics over scored boxes (design section 7): PASCAL VOC 2010 all-point AP per class,
its mean, and a class-aware lesion FROC. Task-agnostic: inputs are plain tuples.

- ground truth: ``(image, class, box)``; predictions: ``(image, class, box, score)``, in the
  order they were generated. ``image`` is any hashable key, ``box`` ``(x1, y1, x2, y2)`` in
  pixels; IoU is :func:`medgrounder.core.boxes.iou` (continuous, no +1).
- ranking: predictions sorted by score, descending, over all images at once; ties keep the
  input order (a stable sort), so equal scores rank in generation order, deterministically.
- matching (:func:`match`): in that order, each prediction is a true positive when some still
  unmatched GT box of its image and class has IoU > ``iou_thr`` (``>=`` with ``inclusive``); it
  takes the one with the highest IoU (the first on ties) and marks it matched. Any other
  prediction (no overlap, wrong class, or a duplicate of a matched box) is a false positive.
  ``matching="voc"`` is the VOC devkit's / map-boxes' variant: the prediction looks only at the
  GT box of highest IoU, matched or not, and is a false positive if that one is taken.

The VinBigData figures (mAP@0.4 with "No finding" as a 15th class, FROC at 1/8 ... 8 FP per
image) are built from these functions in :mod:`medgrounder.tasks.detection`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medgrounder.core.boxes import iou

__all__ = ["FROC_RATES", "ClassAP", "average_precision", "class_aps", "froc", "match", "mean_ap"]

GT = tuple[Hashable, str, Sequence[float]]
Pred = tuple[Hashable, str, Sequence[float], float]
#: FROC operating points: average false positives per image (LUNA16's CPM points)
FROC_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
MATCHING = ("unmatched", "voc")


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Indices of ``scores`` by descending score, ties in input order (stable)."""
    return np.argsort(-np.asarray(scores, dtype=float), kind="stable")


def match(gts: Iterable[GT], preds: Sequence[Pred], iou_thr: float = 0.4, inclusive: bool = False,
          matching: str = "unmatched") -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching in rank order (module docstring).

    Returns ``(order, tp)``: ``order`` (N,) the prediction indices in rank order (:func:`ranking`)
    and ``tp`` (N,) bool, whether ``preds[order[k]]`` is a true positive.
    """
    if matching not in MATCHING:
        raise ValueError(f"matching must be one of {MATCHING}, got {matching!r}")
    boxes: dict[tuple, list[Sequence[float]]] = defaultdict(list)
    for image, cls, box in gts:
        boxes[(image, cls)].append(box)
    taken = {k: np.zeros(len(v), dtype=bool) for k, v in boxes.items()}
    order = ranking([p[3] for p in preds])
    tp = np.zeros(len(order), dtype=bool)
    for k, i in enumerate(order):
        image, cls, box, _ = preds[i]
        cands = boxes.get((image, cls))
        if not cands:
            continue
        ious = np.array([iou(box, g) for g in cands])
        used = taken[(image, cls)]
        if matching == "voc":  # the best GT box overall; a taken one makes a duplicate
            j = int(np.argmax(ious))
        else:  # the best GT box among the unmatched ones
            free = np.where(used, -np.inf, ious)
            j = int(np.argmax(free))
        hit = (ious[j] >= iou_thr) if inclusive else (ious[j] > iou_thr)
        if hit and not used[j]:
            used[j] = tp[k] = True
    return order, tp


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2010 all-point AP: the area under the precision envelope (precision made
    non-increasing from the right), ``sum_k (r_k - r_{k-1}) * max_{j >= k} p_j`` over the ranked
    predictions, with ``r_0 = 0``. No interpolation grid (COCO samples 101 recall points)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=float), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=float), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


@dataclass(frozen=True)
class ClassAP:
    """One class's precision-recall curve over its ranked predictions: ``recall``, ``precision``
    (N,) after each prediction, ``scores`` (N,) in rank order, ``num_gt`` and ``ap``
    (:func:`average_precision`; 0.0 with ground truth and no prediction, ``None`` without
    ground truth, where AP is undefined)."""

    cls: str
    num_gt: int
    num_pred: int
    ap: float | None
    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


def class_aps(gts: Sequence[GT], preds: Sequence[Pred], iou_thr: float = 0.4, inclusive: bool = False,
              matching: str = "unmatched") -> dict[str, ClassAP]:
    """:class:`ClassAP` of every class with ground truth or predictions (sorted by name), from one
    :func:`match` over all predictions."""
    order, tp = match(gts, preds, iou_thr, inclusive, matching)
    num_gt: dict[str, int] = defaultdict(int)
    for _, cls, _ in gts:
        num_gt[cls] += 1
    ranked_cls = np.array([preds[i][1] for i in order], dtype=object)
    ranked_scores = np.array([float(preds[i][3]) for i in order], dtype=float)
    out = {}
    for cls in sorted(set(num_gt) | set(ranked_cls.tolist())):
        mine = ranked_cls == cls
        hits = tp[mine]
        ctp = np.cumsum(hits)
        cfp = np.cumsum(~hits)
        n = num_gt.get(cls, 0)
        recall = ctp / n if n else np.zeros(len(hits))
        precision = ctp / np.maximum(ctp + cfp, 1)
        ap = average_precision(recall, precision) if n else None
        out[cls] = ClassAP(cls, n, int(mine.sum()), ap, recall, precision, ranked_scores[mine])
    return out


def mean_ap(aps: dict[str, ClassAP]) -> float:
    """Mean AP over the classes that have ground truth (0.0 when none has)."""
    vals = [a.ap for a in aps.values() if a.ap is not None]
    return float(np.mean(vals)) if vals else 0.0


def froc(gts: Sequence[GT], preds: Sequence[Pred], num_images: int, iou_thr: float = 0.4,
         rates: Sequence[float] = FROC_RATES, inclusive: bool = False) -> dict[float, float]:
    """Class-aware lesion FROC: sensitivity at each average number of false positives per image.

    A prediction is a hit when it has the class of an unmatched GT lesion of its image with
    IoU > ``iou_thr`` (:func:`match`; one hit per lesion, a duplicate is a false positive).
    Operating points are score thresholds ``s``: the predictions with score >= s (tied
    predictions enter together), plus the empty set; each gives sensitivity = hits / GT lesions
    and FP/image = false positives / ``num_images`` (every image, with or without lesions).
    ``sens@r`` is the highest sensitivity of an operating point with FP/image <= r (a step
    function, no interpolation: no point is invented between two thresholds). Returns
    ``{r: sens}``; 0.0 everywhere without GT lesions or images.
    """
    order, tp = match(gts, preds, iou_thr, inclusive)
    n_gt = sum(1 for _ in gts)
    if not n_gt or num_images <= 0:
        return dict.fromkeys(rates, 0.0)
    scores = np.array([float(preds[i][3]) for i in order], dtype=float)
    # the last prediction of each group of equal scores closes an operating point
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if len(scores) else np.array([], int)
    sens = np.concatenate(([0.0], np.cumsum(tp)[ends] / n_gt))
    fppi = np.concatenate(([0.0], np.cumsum(~tp)[ends] / num_images))
    return {r: float(sens[fppi <= r].max()) for r in rates}
