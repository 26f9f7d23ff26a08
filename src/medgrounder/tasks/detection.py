"""What the localizing tasks share to score scored boxes as a detector (design section 7):
reading a row's ``prediction_boxes`` (contract), the metric keys, the markdown table and the
settings an export records. The task modules say what a class and an image are.

A row carries ``prediction_boxes: [{"label", "box": [x1, y1, x2, y2] pixels, "score", ...}]``
in generation order. Detection metrics need every row's boxes: a file where no row has the
field has none (old files score as before), a file where only some rows have it is refused
(a missing list would silently count as "no box"); ``prediction_boxes: []`` is a real "no box".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medgrounder.metrics.detection import FROC_RATES, ClassAP, class_aps, froc, mean_ap
from medgrounder.metrics.tables import markdown_table

__all__ = ["CONSTANT", "DETECTION", "FIELD", "ap_keys", "boxes_of", "detection_table", "froc_keys", "has_boxes",
           "settings"]

#: the prefix of the detection keys in a task's metrics section (``detection/map@0.4``)
DETECTION = "detection/"
#: the constant-score variant's prefix under :data:`DETECTION` (``detection/constant/map@0.4``)
CONSTANT = "constant/"
FIELD = "prediction_boxes"


def has_boxes(rows: Sequence[Mapping]) -> bool:
    """Whether the rows carry scored boxes: True when every row has ``prediction_boxes``, False
    when none has; a mix raises ``ValueError`` naming the first row without it."""
    carry = [r.get(FIELD) is not None for r in rows]
    if all(carry):
        return bool(rows)
    if not any(carry):
        return False
    r = rows[carry.index(False)]
    raise ValueError(f"row {r.get('id')!r} has no {FIELD} while {sum(carry)} of {len(rows)} rows have them: "
                     f"detection metrics need every row's boxes ({FIELD}: [] for a row without a box)")


def boxes_of(row: Mapping, constant: bool = False) -> list[tuple[str, tuple[float, ...], float]]:
    """``(label, pixel box, score)`` of a row's ``prediction_boxes`` in generation order; every
    score 1.0 with ``constant``."""
    return [(str(b["label"]), tuple(float(v) for v in b["box"]), 1.0 if constant else float(b["score"]))
            for b in row[FIELD]]


def ap_keys(aps: Mapping[str, ClassAP], thr: float) -> dict:
    """``ap@<thr>/<class>`` for each class with ground truth and ``map@<thr>`` (their mean)."""
    out = {f"ap@{thr:g}/{c}": a.ap for c, a in aps.items() if a.ap is not None}
    out[f"map@{thr:g}"] = mean_ap(aps)
    return out


def froc_keys(gts, preds, num_images: int, iou_thr: float = 0.4) -> dict:
    """``froc/sens@<r>`` at the :data:`FROC_RATES` (``sens@0.125`` ... ``sens@8``) and
    ``froc/mean``, their mean (LUNA16's CPM)."""
    sens = froc(gts, preds, num_images, iou_thr)
    out = {f"froc/sens@{r:g}": v for r, v in sens.items()}
    out["froc/mean"] = float(np.mean(list(sens.values())))
    return out


def ap_section(gts, preds, thresholds: Sequence[float]) -> dict:
    """:func:`ap_keys` at each IoU threshold (strict ``>``)."""
    out: dict = {}
    for t in thresholds:
        out.update(ap_keys(class_aps(gts, preds, t), t))
    return out


def detection_table(metrics: Mapping, columns: Sequence[tuple[str, str]], label: str = "model") -> str:
    """Method | one column per ``(key, header)`` (3 decimals): the model's scores ranked by box
    confidence and by generation order (constant scores); ``""`` without detection keys."""
    if f"{DETECTION}{columns[0][0]}" not in metrics:
        return ""
    rows = []
    for name, prefix in ((f"{label}, box confidence", DETECTION),
                         (f"{label}, constant scores (generation order)", DETECTION + CONSTANT)):
        rows.append([name] + [_fmt(metrics.get(prefix + k)) for k, _ in columns])
    return markdown_table(["Method", *(h for _, h in columns)], rows)


def per_class_table(metrics: Mapping, thr: float, title: str) -> str:
    """Class | AP (confidence) | AP (constant scores), over the classes with ground truth."""
    key = f"{DETECTION}ap@{thr:g}/"
    classes = [k.removeprefix(key) for k in metrics if k.startswith(key)]
    if not classes:
        return ""
    rows = [[c, _fmt(metrics.get(key + c)), _fmt(metrics.get(f"{DETECTION}{CONSTANT}ap@{thr:g}/{c}"))]
            for c in classes]
    return markdown_table([title, f"AP@{thr:g} (confidence)", f"AP@{thr:g} (constant)"], rows)


def _fmt(v) -> str:
    return "-" if not isinstance(v, int | float) or isinstance(v, bool) else f"{v:.3f}"


def froc_columns() -> list[tuple[str, str]]:
    return [(f"froc/sens@{r:g}", f"Sens@{r:g} FP/img") for r in FROC_RATES] + [("froc/mean", "FROC mean")]


def settings(rows: Sequence[Mapping], **extra) -> dict:
    """The metric settings an export records beside itself: the rule of matching, ranking and
    interpolation, the box parts the rows carry and any ``score_rule`` they state."""
    parts = sorted({k for r in rows for b in r.get(FIELD) or () for k in b} - {"label", "box", "score"})
    rules = sorted({str(r["score_rule"]) for r in rows if r.get("score_rule") is not None})
    return {
        "iou": "continuous, in original pixels, no +1",
        "ranking": "score descending over all images; ties in generation (file) order",
        "matching": "greedy in rank order: a hit takes the unmatched GT box of its image and class with the "
                    "highest IoU above the threshold; duplicates are false positives",
        "interpolation": "PASCAL VOC 2010 all-point (area under the precision envelope); COCOeval samples 101 "
                         "recall points instead and matches at IoU >= threshold: with distinct scores and no IoU at the "
                         "threshold, its AP is within 0.01 of ours (tied scores may rank differently there)",
        "score_rule": rules or "not stated in the rows",
        "box_parts": parts,
        **extra,
    }
