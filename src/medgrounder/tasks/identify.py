"""``[identify]``: localization of VinDr-CXR's 22 local findings with boxes (LiteGPT stage 1);
``[grounding]`` is the same task under MiniGPT-v2's identifier (LiteGPT table 6).

The answer lists classes in label order, the boxes of one class left to right (then top to
bottom) joined with ``<delim>``: ``Local diseases of this chest radiograph are <p>Aortic
enlargement</p> {<53><28><65><36>}, <p>Cardiomegaly</p> {<38><49><82><63>}.``; an image
without findings answers :data:`NO_LOCAL_FINDINGS`.

Scored with LiteGPT's Accuracy@t (:func:`~medgrounder.metrics.localization.localization_accuracy`)
and the 22-local-label report, beside a class-prior mean-box baseline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from medgrounder.core.boxes import from_grid
from medgrounder.core.grammar import BOX_DELIM, BOX_RE, DELIM_RE, PHRASE_RE, format_box
from medgrounder.core.labels import LOCAL_INDEX, LOCAL_LABELS
from medgrounder.metrics.classification import multilabel_report
from medgrounder.metrics.localization import DEFAULT_THRESHOLDS, localization_accuracy
from medgrounder.metrics.tables import classification_table, localization_table
from medgrounder.tasks.base import (
    BASELINE,
    Target,
    Task,
    class_prior_boxes,
    sorted_boxes,
    text_section,
)
from medgrounder.tasks.parse import Parsed, grid_box, norm, prefix_re

LOCAL_PREFIX = "Local diseases of this chest radiograph are "
NO_LOCAL_FINDINGS = "The chest radiograph shows no findings."
# LiteGPT section 4.4, stage 1.
INSTRUCTION = (
    "Please describe the critical findings along with their localized bounding boxes in the "
    "radiological image of a chest as much detail as possible. If there are no findings, "
    "state that the chest radiograph shows no findings."
)


def identify_answer(findings: Iterable[tuple[str, Sequence[int]]]) -> str:
    """``[(class, grid_box), ...]`` -> the ``[identify]`` answer."""
    by_class: dict[str, list[Sequence[int]]] = {}
    for name, box in findings:
        by_class.setdefault(name, []).append(box)
    if not by_class:
        return NO_LOCAL_FINDINGS
    parts = []
    for name in sorted(by_class, key=lambda n: LOCAL_INDEX[n]):
        boxes = BOX_DELIM.join(format_box(b) for b in sorted_boxes(by_class[name]))
        parts.append(f"<p>{name}</p> {boxes}")
    return LOCAL_PREFIX + ", ".join(parts) + "."


# ------------------------------------------------------------------------------ parser
_SEP_RE = re.compile(r"(?:[\s,;:.]+|and\b)", re.IGNORECASE)
_TOKEN_START_RE = re.compile(r"[<{]")
_LOCAL_PREFIX_RE = prefix_re(LOCAL_PREFIX)
_LOCAL_NAMES = {norm(n): n for n in LOCAL_LABELS}
_NO_FINDINGS_RES = [
    re.compile(p)
    for p in (
        r"none",
        r"(?:(?:the|this) )?(?:chest )?(?:radiograph|x-ray|xray|image|study)"
        r"(?: (?:shows|has|demonstrates|reveals|with))? no (?:\w+ )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)",
        r"no (?:(?:local|significant|acute|abnormal|critical|visible) )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)(?: (?:found|detected|seen|present))?",
    )
]


def _is_no_findings(text: str) -> bool:
    m = _LOCAL_PREFIX_RE.match(text)
    body = " ".join(text[m.end() if m else 0 :].lower().split()).strip(" .!")
    return any(r.fullmatch(body) for r in _NO_FINDINGS_RES)


def parse_identify(text: object) -> Parsed:
    """Parse an ``[identify]`` answer into ``(local class, grid box)`` findings.

    Grammar: optional :data:`LOCAL_PREFIX`, then groups ``<p>Class</p> box (<delim> box)*``
    separated by commas / whitespace / "and", then an optional period. Class names match the
    22 local labels case- and whitespace-insensitively; a class may repeat (its boxes add up).
    A "no findings" sentence (e.g. :data:`NO_LOCAL_FINDINGS`) is valid with no findings.

    Invalid (``valid=False``): empty or non-str text, an unknown class, a ``<p>`` phrase with
    no box, a box before any phrase, a dangling ``<delim>``, or any other text (truncated
    tokens, chatter). Findings of the known classes are still returned.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(False)
    if not BOX_RE.search(text) and not PHRASE_RE.search(text) and _is_no_findings(text):
        return Parsed(True)

    m = _LOCAL_PREFIX_RE.match(text)
    pos = m.end() if m else 0
    valid = True
    findings: list[tuple[str, tuple[int, int, int, int]]] = []
    current: str | None = None  # canonical class of the open group, "" if unknown
    n_boxes = 0  # boxes in the open group
    pending_delim = False  # a <delim> waiting for its box
    n_groups = 0
    while pos < len(text):
        if m := _SEP_RE.match(text, pos):
            pos = m.end()
        elif m := PHRASE_RE.match(text, pos):
            if (current is not None and n_boxes == 0) or pending_delim:
                valid = False
            current = _LOCAL_NAMES.get(norm(m.group(1)), "")
            valid &= bool(current)
            n_boxes, pending_delim, n_groups = 0, False, n_groups + 1
            pos = m.end()
        elif m := BOX_RE.match(text, pos):
            if current is None:
                valid = False
            elif current:
                findings.append((current, grid_box(m)))
            n_boxes, pending_delim = n_boxes + 1, False
            pos = m.end()
        elif m := DELIM_RE.match(text, pos):
            valid &= n_boxes > 0 and not pending_delim
            pending_delim = True
            pos = m.end()
        else:  # unrecognised text: skip to the next possible token
            valid = False
            nxt = _TOKEN_START_RE.search(text, pos + 1)
            pos = nxt.start() if nxt else len(text)
    if n_groups == 0 or n_boxes == 0 or pending_delim:
        valid = False
    return Parsed(valid, findings, {c for c, _ in findings})


# ------------------------------------------------------------------------------ metrics
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
    out.update({f"local/{k}": v for k, v in multilabel_report(y_true, y_pred, LOCAL_LABELS).items()})
    return out


def mean_box_baseline(
    train_findings: Iterable[tuple[str, Sequence[int]]],
    rows: Sequence[Mapping],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    plus_one: bool = False,
) -> dict:
    """Class-prior localization baseline reported beside the model.

    For each test row, predict one box per ground-truth class: the mean grid box of that class
    over ``train_findings`` (``(class, grid box)`` pairs; :func:`class_prior_boxes`), or the
    mean of all training boxes for a class not seen in training. The classes are given for
    free, so this isolates "where does this finding usually sit". Returns
    :func:`localization_accuracy` of those predictions against :func:`gt_findings`.
    """
    means, fallback = class_prior_boxes(train_findings)
    samples = []
    for row in rows:
        gt = gt_findings(row)
        pred = [(c, means.get(c, fallback)) for c in sorted({c for c, _ in gt})]
        samples.append(
            {"width": row["image_width"], "height": row["image_height"], "gt": gt, "pred": pred}
        )
    return localization_accuracy(samples, thresholds, plus_one=plus_one)


# ------------------------------------------------------------------------------ the task
class Identify(Task):
    name = "identify"
    metric_key = "vindr_identify"
    instructions = (INSTRUCTION,)
    localizes = True
    row_fields = ("prediction", "reference", "image_width", "image_height")
    sweep_columns = ("valid_rate", "acc@0.3", "acc@0.5", "text/rouge1")
    summary_keys = ("num_samples", "valid_rate", "num_gt", "num_pred")
    draws_figure = True

    def __init__(self, identifier: str | None = None):
        super().__init__(identifier)
        self.name = self.identifier  # [grounding] is its own stage task name

    def answer(self, target: Target) -> str:
        return identify_answer(target.findings)

    def answer_corpus(self) -> list[str]:
        return [LOCAL_PREFIX, NO_LOCAL_FINDINGS,
                *(f"<p>{name}</p> {{<12><34><56><78>}}<delim>{{<90><100><0><5>}}," for name in LOCAL_LABELS)]

    def parse(self, text: object) -> Parsed:
        return parse_identify(text)

    def score(self, rows, *, plus_one=False, keep_tags=False, meteor="nltk", text=True) -> dict:
        """:func:`vindr_identify_metrics`; with ``text``, LiteGPT tables 4-5's text metrics."""
        metrics = vindr_identify_metrics(rows, plus_one=plus_one)
        if text:
            metrics.update(text_section(rows, keep_tags, meteor))
        return metrics

    def baseline(self, train, rows) -> dict:
        """:func:`mean_box_baseline`'s Accuracy@t (``baseline/acc@t``)."""
        m = mean_box_baseline((f for t in train for f in t.findings), rows)
        return {f"{BASELINE}{k}": v for k, v in m.items() if k.startswith("acc@")}

    def report(self, metrics, label=None, detailed=False) -> str:
        rows = {self._label(label): metrics}
        base = {k.removeprefix(BASELINE): v for k, v in metrics.items() if k.startswith(BASELINE)}
        if base:
            rows["mean-box baseline (oracle class)"] = base
        return "\n".join([localization_table(rows, strict=detailed), "", f"Valid outputs [{self.identifier}]: {metrics['valid_rate']:.4f}",
                          "", classification_table(metrics, LOCAL_LABELS, "local/", "Local labels")])

    def gt_boxes(self, row):
        return [(b[0], b[1:]) for b in row["gt_boxes"]]
