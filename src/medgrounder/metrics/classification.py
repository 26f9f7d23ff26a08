"""Multilabel and binary classification reports (the papers' tables come from sklearn's
classification report; design section 7). Rates are fractions in [0, 1]."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["AVERAGES", "binary_report", "multilabel_report"]

AVERAGES = ("micro", "macro", "weighted", "samples")


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0 where ``den == 0`` (sklearn's ``zero_division=0``)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _prf(tp, true_sum, pred_sum) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 (``2 TP / (|true| + |pred|)``) from counts, 0 on zero division."""
    tp = np.asarray(tp, float)
    return _divide(tp, pred_sum), _divide(tp, true_sum), _divide(2 * tp, np.add(true_sum, pred_sum))


def multilabel_report(
    y_true: Sequence[Iterable[str]], y_pred: Sequence[Iterable[str]], labels: Sequence[str]
) -> dict:
    """Per-class and averaged precision / recall / F1 / support of label sets.

    Same numbers as sklearn's ``classification_report(Y_true, Y_pred, target_names=labels,
    output_dict=True, zero_division=0)`` on the indicator matrices over ``labels`` (names not in
    ``labels`` are ignored): per class ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)``,
    ``F1 = 2 TP / (2 TP + FP + FN)``, each 0 when its denominator is 0; ``micro`` pools the
    counts of all classes; ``macro`` is the unweighted class mean; ``weighted`` the mean weighted
    by support (unweighted when all supports are 0); ``samples`` computes P / R / F1 per image
    over its label sets and averages over images. Average supports are the total support.

    Flat keys: ``<label>/precision``, ``<label>/recall``, ``<label>/f1``, ``<label>/support`` and
    the same for ``micro``, ``macro``, ``weighted``, ``samples``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples, y_pred {len(y_pred)}")
    index = {name: j for j, name in enumerate(labels)}
    t = np.zeros((len(y_true), len(labels)), dtype=bool)
    p = np.zeros_like(t)
    for mat, sets in ((t, y_true), (p, y_pred)):
        for i, names in enumerate(sets):
            for name in names:
                if name in index:
                    mat[i, index[name]] = True
    tp, true_sum, pred_sum = (t & p).sum(0), t.sum(0), p.sum(0)
    prec, rec, f1 = _prf(tp, true_sum, pred_sum)
    out: dict = {}
    for j, name in enumerate(labels):
        out[f"{name}/precision"] = float(prec[j])
        out[f"{name}/recall"] = float(rec[j])
        out[f"{name}/f1"] = float(f1[j])
        out[f"{name}/support"] = int(true_sum[j])
    total = int(true_sum.sum())
    weights = true_sum if total else None
    per_sample = _prf((t & p).sum(1), t.sum(1), p.sum(1))
    averaged = {
        "micro": _prf(tp.sum(), total, pred_sum.sum()),
        "macro": [v.mean() if v.size else 0.0 for v in (prec, rec, f1)],
        "weighted": [np.average(v, weights=weights) if v.size else 0.0 for v in (prec, rec, f1)],
        "samples": [v.mean() if v.size else 0.0 for v in per_sample],
    }
    for avg, values in averaged.items():
        for metric, v in zip(("precision", "recall", "f1"), values, strict=True):
            out[f"{avg}/{metric}"] = float(v)
        out[f"{avg}/support"] = total
    return out


def binary_report(y_true: Sequence[bool], y_pred: Sequence[bool], prefix: str) -> dict:
    """Precision / recall / F1 / support of the positive class ``True`` (0 on zero division)."""
    t, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    prec, rec, f1 = _prf((t & p).sum(), t.sum(), p.sum())
    return {
        f"{prefix}/precision": float(prec),
        f"{prefix}/recall": float(rec),
        f"{prefix}/f1": float(f1),
        f"{prefix}/support": int(t.sum()),
    }
