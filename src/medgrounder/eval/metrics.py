"""VinDr-CXR and MS-CXR metrics over plain python objects (design section 7).

All rates are fractions in [0, 1]; :mod:`medgrounder.eval.tables` prints percentages. Rows are
the ``predictions.jsonl`` objects of design section 6. An invalid prediction is scored as an
empty one (no boxes, no labels); it is never dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from medgrounder.core.boxes import from_grid, iou, to_grid
from medgrounder.core.labels import GLOBAL_LABELS, LOCAL_LABELS, MSCXR_CATEGORIES, NO_FINDING
from medgrounder.eval.parse import parse_identify, parse_vqa

__all__ = [
    "MSCXR_CATEGORIES",
    "box_iou_dice",
    "gt_findings",
    "localization_accuracy",
    "mean_box_baseline",
    "mscxr_mean_box_baseline",
    "mscxr_refer_metrics",
    "mscxr_sample_scores",
    "multilabel_report",
    "union_overlap",
    "vindr_identify_metrics",
    "vindr_vqa_metrics",
]

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5)
AVERAGES = ("micro", "macro", "weighted", "samples")


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
    - ``num_gt``, ``num_pred``: box counts. With no boxes at all every rate is 0.
    """
    hits = np.zeros(len(thresholds))
    matches = np.zeros(len(thresholds))
    num_gt = num_pred = 0
    for s in samples:
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
    for k, t in enumerate(thresholds):
        out[_key("acc", t)] = float(hits[k] / num_gt) if num_gt else 0.0
        denom = num_gt + num_pred - matches[k]
        out[_key("acc_strict", t)] = float(matches[k] / denom) if denom else 0.0
    return out


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


def _binary_report(y_true: Sequence[bool], y_pred: Sequence[bool], prefix: str) -> dict:
    """Precision / recall / F1 / support of the positive class ``True`` (0 on zero division)."""
    t, p = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    prec, rec, f1 = _prf((t & p).sum(), t.sum(), p.sum())
    return {
        f"{prefix}/precision": float(prec),
        f"{prefix}/recall": float(rec),
        f"{prefix}/f1": float(f1),
        f"{prefix}/support": int(t.sum()),
    }


def _prefixed(prefix: str, metrics: Mapping) -> dict:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def gt_findings(row: Mapping) -> list[tuple[str, tuple[float, ...]]]:
    """Ground-truth ``(class, pixel box)`` of an identify row: ``gt_boxes`` (``[class, x1, y1,
    x2, y2]`` in pixels) when present, else the parsed ``reference`` mapped from the grid."""
    if row.get("gt_boxes") is not None:
        return [(str(b[0]), tuple(float(v) for v in b[1:5])) for b in row["gt_boxes"]]
    ref = parse_identify(row["reference"])
    if not ref.valid:
        raise ValueError(f"row {row.get('id')!r}: unparseable reference {row['reference']!r}")
    w, h = row["image_width"], row["image_height"]
    return [(c, from_grid(g, w, h)) for c, g in ref.findings]


def vindr_identify_metrics(
    rows: Sequence[Mapping],
    plus_one: bool = False,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict:
    """``[identify]`` metrics: ``valid_rate`` (fraction of predictions that parse),
    :func:`localization_accuracy` keys (``acc@t``, ``acc_strict@t``, ``num_gt``, ``num_pred``),
    ``num_samples`` and the 22-local-label :func:`multilabel_report` under ``local/``, where an
    image's labels are the classes mentioned with boxes (GT classes vs predicted classes)."""
    samples, y_true, y_pred, n_valid = [], [], [], 0
    for row in rows:
        gt = gt_findings(row)
        parsed = parse_identify(row.get("prediction"))
        n_valid += parsed.valid
        pred = parsed.findings if parsed.valid else []
        samples.append(
            {"width": row["image_width"], "height": row["image_height"], "gt": gt, "pred": pred}
        )
        y_true.append({c for c, _ in gt})
        y_pred.append({c for c, _ in pred})
    out = {"num_samples": len(samples), "valid_rate": n_valid / len(samples) if samples else 0.0}
    out.update(localization_accuracy(samples, thresholds, plus_one=plus_one))
    out.update(_prefixed("local", multilabel_report(y_true, y_pred, LOCAL_LABELS)))
    return out


def vindr_vqa_metrics(rows: Sequence[Mapping]) -> dict:
    """``[vqa]`` metrics: ``valid_rate``, ``num_samples``, the 6-global-label
    :func:`multilabel_report` under ``global/`` and LiteGPT Table 1's binary task.

    Binary task: an image is *finding* when its labels contain any global label except
    "No finding". ``finding/precision|recall|f1|support`` score the finding class,
    ``no_finding/...`` the no-finding class, ``finding/accuracy`` the fraction of images whose
    binary decision is right. An invalid prediction has no labels; it never earns credit: in
    the binary task it counts as the wrong decision for its image.
    """
    y_true, y_pred, t_bin, p_bin, n_valid = [], [], [], [], 0
    for row in rows:
        ref = parse_vqa(row["reference"])
        if not ref.valid:
            raise ValueError(f"row {row.get('id')!r}: unparseable reference {row['reference']!r}")
        parsed = parse_vqa(row.get("prediction"))
        n_valid += parsed.valid
        pred = parsed.labels if parsed.valid else set()
        y_true.append(ref.labels)
        y_pred.append(pred)
        truth = bool(ref.labels - {NO_FINDING})
        t_bin.append(truth)
        p_bin.append(bool(pred - {NO_FINDING}) if pred else not truth)
    n = len(y_true)
    out = {"num_samples": n, "valid_rate": n_valid / n if n else 0.0}
    out.update(_prefixed("global", multilabel_report(y_true, y_pred, GLOBAL_LABELS)))
    out.update(_binary_report(t_bin, p_bin, "finding"))
    out.update(_binary_report([not v for v in t_bin], [not v for v in p_bin], "no_finding"))
    out["finding/accuracy"] = float(np.mean(np.equal(t_bin, p_bin))) if n else 0.0
    return out


def mean_box_baseline(
    train_findings: Iterable[tuple[str, Sequence[int]]],
    rows: Sequence[Mapping],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    plus_one: bool = False,
) -> dict:
    """Class-prior localization baseline reported beside the model.

    For each test row, predict one box per ground-truth class: the mean grid box of that class
    over ``train_findings`` (``(class, grid box)`` pairs, coordinates rounded half up), or the
    mean of all training boxes for a class not seen in training. The classes are given for
    free, so this isolates "where does this finding usually sit". Returns
    :func:`localization_accuracy` of those predictions against :func:`gt_findings`.
    """
    by_class: dict[str, list[Sequence[int]]] = defaultdict(list)
    every: list[Sequence[int]] = []
    for c, box in train_findings:
        by_class[c].append(box)
        every.append(box)
    if not every:
        raise ValueError("mean_box_baseline needs at least one training box")

    def mean(boxes: list[Sequence[int]]) -> tuple[int, ...]:
        return tuple(int(np.floor(v + 0.5)) for v in np.mean(np.asarray(boxes, float), axis=0))

    means = {c: mean(b) for c, b in by_class.items()}
    fallback = mean(every)
    samples = []
    for row in rows:
        gt = gt_findings(row)
        pred = [(c, means.get(c, fallback)) for c in sorted({c for c, _ in gt})]
        samples.append(
            {"width": row["image_width"], "height": row["image_height"], "gt": gt, "pred": pred}
        )
    return localization_accuracy(samples, thresholds, plus_one=plus_one)


# --------------------------------------------------------------------------------- MS-CXR


def _pixel_boxes(boxes: Iterable[Sequence]) -> list[tuple[float, float, float, float]]:
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


def mscxr_sample_scores(row: Mapping) -> tuple[bool, float, float]:
    """``(valid, iou, dice)`` of one ``[refer]`` row: the prediction's grid boxes (several may be
    joined by ``<delim>``) mapped to pixels, against ``gt_boxes`` (pixels); invalid output is 0."""
    from medgrounder.eval.parse import parse_refer

    parsed = parse_refer(row.get("prediction"))
    if not parsed.valid:
        return False, 0.0, 0.0
    w, h = row["image_width"], row["image_height"]
    pred = [from_grid(g, w, h) for _, g in parsed.findings]
    return (True, *box_iou_dice(pred, _pixel_boxes(row["gt_boxes"])))


def mscxr_refer_metrics(rows: Sequence[Mapping], categories: Sequence[str] = MSCXR_CATEGORIES) -> dict:
    """PFMVG Tables 1-4 (design section 7).

    Per sample, IoU and Dice between the union of the predicted boxes and the union of the
    ground-truth boxes, as masks in original pixels (:func:`box_iou_dice`); an invalid output
    scores 0 and still counts. ``iou/<category>`` and ``dice/<category>`` average the samples of
    a category; ``iou/mean`` / ``dice/mean`` average the categories that have samples (the 8 of
    MS-CXR in the paper); ``iou/weighted`` / ``dice/weighted`` average all samples (PFMVG's wIoU
    and wDice: categories weighted by their sample counts). Also ``num/<category>``,
    ``num_samples``, ``valid_rate`` and ``valid_rate/<category>``. Categories not in
    ``categories`` get their own keys and take part in the averages.
    """
    by_cat: dict[str, list[tuple[bool, float, float]]] = defaultdict(list)
    for row in rows:
        by_cat[str(row["category"])].append(mscxr_sample_scores(row))
    names = [c for c in categories if c in by_cat] + sorted(set(by_cat) - set(categories))
    every = [s for c in names for s in by_cat[c]]
    out: dict = {"num_samples": len(every),
                 "valid_rate": float(np.mean([s[0] for s in every])) if every else 0.0}
    for c in names:
        v = np.asarray(by_cat[c], dtype=float)
        out[f"num/{c}"] = len(v)
        out[f"valid_rate/{c}"] = float(v[:, 0].mean())
        out[f"iou/{c}"] = float(v[:, 1].mean())
        out[f"dice/{c}"] = float(v[:, 2].mean())
    for k in ("iou", "dice"):
        out[f"{k}/mean"] = float(np.mean([out[f"{k}/{c}"] for c in names])) if names else 0.0
        j = 1 if k == "iou" else 2
        out[f"{k}/weighted"] = float(np.mean([s[j] for s in every])) if every else 0.0
    return out


def mscxr_mean_box_baseline(train_boxes: Iterable[tuple[str, Sequence[int]]], rows: Sequence[Mapping],
                            categories: Sequence[str] = MSCXR_CATEGORIES) -> dict:
    """Category-prior grounding baseline reported beside the model (PFMVG's task).

    Every test row is answered with one box, the mean 0-100 grid box of its category over
    ``train_boxes`` (``(category, grid box)`` pairs, rounded half up), or of all training boxes
    for a category not seen in training; scored by :func:`mscxr_refer_metrics`. The phrase's
    category is given for free, so this measures "where does this finding usually sit"."""
    from medgrounder.tasks.refer import refer_answer

    by_cat: dict[str, list[Sequence[int]]] = defaultdict(list)
    every: list[Sequence[int]] = []
    for c, box in train_boxes:
        by_cat[c].append(box)
        every.append(box)
    if not every:
        raise ValueError("mscxr_mean_box_baseline needs at least one training box")

    def mean(boxes: list[Sequence[int]]) -> tuple[int, ...]:
        return tuple(int(np.floor(v + 0.5)) for v in np.mean(np.asarray(boxes, float), axis=0))

    fallback = mean(every)
    answers = {c: refer_answer([mean(b)]) for c, b in by_cat.items()}
    baseline_rows = [{**row, "prediction": answers.get(str(row["category"]), refer_answer([fallback]))} for row in rows]
    return mscxr_refer_metrics(baseline_rows, categories)
