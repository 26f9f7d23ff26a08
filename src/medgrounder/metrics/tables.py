"""Markdown tables in the layouts of the LiteGPT paper (tables 1-5 and 8-13) and the PFMVG
paper (tables 1-4)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.metrics.classification import AVERAGES
from medgrounder.metrics.localization import DEFAULT_THRESHOLDS

__all__ = [
    "classification_table",
    "localization_table",
    "markdown_table",
    "refer_table",
    "summary_table",
    "text_table",
]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    align = [":---"] + ["---:"] * (len(header) - 1)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"


def _fmt(value: object, spec: str, scale: float = 1.0) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return format(value * scale if scale != 1 else value, spec)


def classification_table(
    metrics: Mapping, labels: Sequence[str], prefix: str = "", title: str = "Labels"
) -> str:
    """Per-class report as in LiteGPT tables 8-13.

    One row per label, then ``micro avg``, ``macro avg``, ``weighted avg``, ``samples avg``;
    columns ``title`` (e.g. "Local labels") | Precision | Recall | F1-score | Support, scores as
    fractions with 2 decimals. Reads ``<prefix>/<row>/precision`` etc. (``prefix`` like
    ``local``); a missing value prints ``-``.
    """
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    rows = []
    for name, key in [(n, n) for n in labels] + [(f"{a} avg", a) for a in AVERAGES]:
        p, r, f, n = (
            metrics.get(f"{prefix}{key}/{m}") for m in ("precision", "recall", "f1", "support")
        )
        support = _fmt(n, "d" if isinstance(n, int) else ".0f")
        rows.append([name, _fmt(p, ".2f"), _fmt(r, ".2f"), _fmt(f, ".2f"), support])
    return markdown_table([title, "Precision", "Recall", "F1-score", "Support"], rows)


def localization_table(
    rows: Mapping[str, Mapping],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    strict: bool = False,
    named: bool = False,
) -> str:
    """Method | Accuracy@0.3 (%) | Accuracy@0.4 (%) | Accuracy@0.5 (%) as in LiteGPT table 3
    (percent, 2 decimals); ``strict=True`` adds the one-to-one ``acc_strict@t`` columns,
    ``named=True`` the ``acc_named@t`` ones (GT boxes of the classes the answer names)."""
    keys = [f"acc@{t:g}" for t in thresholds]
    header = ["Method"] + [f"Accuracy@{t:g} (%)" for t in thresholds]
    if strict:
        keys += [f"acc_strict@{t:g}" for t in thresholds]
        header += [f"Strict@{t:g} (%)" for t in thresholds]
    if named:
        keys += [f"acc_named@{t:g}" for t in thresholds]
        header += [f"Named@{t:g} (%)" for t in thresholds]
    body = [[name] + [_fmt(m.get(k), ".2f", 100) for k in keys] for name, m in rows.items()]
    return markdown_table(header, body)


def summary_table(metrics: Mapping, keys: Sequence[str] | None = None) -> str:
    """Metric | Value for the scalar entries (all numeric keys, sorted, unless ``keys``):
    integers as is, floats with 4 decimals."""
    if keys is None:
        keys = sorted(
            k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        )
    rows = [
        [k, _fmt(metrics.get(k), "d" if isinstance(metrics.get(k), int) else ".4f")] for k in keys
    ]
    return markdown_table(["Metric", "Value"], rows)


TEXT_COLUMNS = (
    ("rouge1", "ROUGE-1 (%)"),
    ("rouge2", "ROUGE-2 (%)"),
    ("rougeL", "ROUGE-L (%)"),
    ("rougeLsum", "ROUGE-LSUM (%)"),
    ("bleu1", "BLEU-1 (%)"),
    ("bleu2", "BLEU-2 (%)"),
    ("bleu3", "BLEU-3 (%)"),
    ("bleu4", "BLEU-4 (%)"),
    ("meteor", "METEOR (%)"),
)


def text_table(rows: Mapping[str, Mapping], prefix: str = "") -> str:
    """LiteGPT tables 4-5: Method | ROUGE-1..LSUM | BLEU-1..4 | METEOR (percent, 2 decimals) |
    CIDEr (2 decimals); a missing METEOR (no backend) prints ``-``."""
    header = ["Method"] + [h for _, h in TEXT_COLUMNS] + ["CIDEr"]
    body = [
        [name]
        + [_fmt(m.get(prefix + k), ".2f", 100) for k, _ in TEXT_COLUMNS]
        + [_fmt(m.get(prefix + "cider"), ".2f")]
        for name, m in rows.items()
    ]
    return markdown_table(header, body)


def refer_table(rows: Mapping[str, Mapping], metric: str = "iou", categories: Sequence[str] | None = None) -> str:
    """PFMVG tables 1-4: Method | one column per category | mean | wIoU (or wDice), 3 decimals."""
    cats = list(categories or MSCXR_CATEGORIES)
    header = ["Method", *cats, "mean", f"w{'IoU' if metric == 'iou' else 'Dice'}"]
    body = [
        [name] + [_fmt(m.get(f"{metric}/{c}"), ".3f") for c in [*cats, "mean", "weighted"]]
        for name, m in rows.items()
    ]
    return markdown_table(header, body)
