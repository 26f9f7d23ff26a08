"""``[vqa]``: diagnosis of VinDr-CXR's 6 global labels (LiteGPT stage 2). The answer is
``Global diseases of this chest radiograph are Pneumonia, Tuberculosis.`` in label order; an
image without a global finding answers "No finding".

Scored with the 6-global-label report and LiteGPT Table 1's binary finding / no-finding task."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from medgrounder.core.automaton import END, Automaton, Option, Pick, Skip
from medgrounder.core.labels import (
    GLOBAL_ALIASES,
    GLOBAL_INDEX,
    GLOBAL_LABELS,
    NO_FINDING,
    canonical_global,
)
from medgrounder.metrics.classification import binary_report, multilabel_report
from medgrounder.metrics.tables import classification_table
from medgrounder.tasks.base import (
    PAPER,
    Target,
    Task,
    paper_view,
    prefixed,
    protocol_parts,
    text_section,
)
from medgrounder.tasks.parse import Parsed, mentioned, norm, prefix_re

GLOBAL_PREFIX = "Global diseases of this chest radiograph are "
# LiteGPT section 4.4, stage 2.
INSTRUCTION = (
    "Given the provided chest X-ray image, which of the following diagnoses are present "
    "(select all that apply): COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or "
    "No Finding?"
)


#: the answer's list when no option applies: local findings without a diagnosis, the label csv's
#: "No finding" column 0 (LiteGPT's reference code writes an empty list there)
NONE = "none"


def vqa_answer(global_labels: Iterable[str], no_finding: bool = True) -> str:
    """Global labels -> the ``[vqa]`` answer in label order. An empty list is "No finding" when
    ``no_finding`` (the label csv's column) holds, else :data:`NONE`."""
    names = sorted(set(global_labels), key=lambda n: GLOBAL_INDEX[n])
    return GLOBAL_PREFIX + ", ".join(names or [NO_FINDING if no_finding else NONE]) + "."


_GLOBAL_PREFIX_RE = prefix_re(GLOBAL_PREFIX)
_GLOBAL_NAMES = {norm(n): n for n in GLOBAL_LABELS}
_GLOBAL_NAMES.update({norm(a): c for a, c in GLOBAL_ALIASES.items()})
_GLOBAL_NAMES[norm("No findings")] = NO_FINDING


def parse_vqa(text: object) -> Parsed:
    """Parse a ``[vqa]`` answer into canonical global labels (``findings`` stays empty).

    Grammar: optional :data:`GLOBAL_PREFIX`, items separated by ``,`` / ``;`` / "and" / ``&``,
    optional final period. Each whole item must name a global label (case-insensitive; the
    aliases "Other diseases" and "No findings" are accepted); there is no substring search, so
    "no pneumonia" is an unknown item. ``labels``: the known items, whatever the others (pair by
    pair); ``valid``: every item known and at least one.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(False)
    m = _GLOBAL_PREFIX_RE.match(text)
    body = text[m.end() :] if m else text
    body = body.strip().rstrip(".").strip()
    if norm(body) == NONE:
        return Parsed(True, [], set())
    items = [i for i in re.split(r"\s*(?:[,;&]|\band\b)\s*", body, flags=re.IGNORECASE) if i]
    labels = {_GLOBAL_NAMES.get(norm(i)) for i in items}
    valid = bool(items) and None not in labels
    labels.discard(None)
    return Parsed(valid, [], labels)  # type: ignore[arg-type]


@lru_cache(maxsize=16)
def vqa_grammar(labels: Sequence[str] = GLOBAL_LABELS) -> Automaton:
    """The ``[vqa]`` answers :func:`vqa_answer` writes over ``labels`` (global labels): the prefix,
    then :data:`NONE`, "No finding" alone, or diagnoses in label order joined by ``, ``, then ``.``."""
    known = sorted({canonical_global(n) for n in labels} - {NO_FINDING}, key=GLOBAL_INDEX.__getitem__)

    def items(first: bool) -> tuple[Option, ...]:
        alone = (Option(f"{NONE}.", END), Option(f"{NO_FINDING}.", END)) if first else ()
        more = tuple(Option(f"{n}, ", "more", label=GLOBAL_INDEX[n]) for n in known[:-1])
        return alone + more + tuple(Option(f"{n}.", END, label=GLOBAL_INDEX[n]) for n in known)

    return Automaton({"start": Skip(" ", "prefix"), "prefix": Pick((Option(GLOBAL_PREFIX, "first"),)),
                      "first": Pick(items(True)), "more": Pick(items(False))}, "start")


def mentioned_global(text: object) -> set[str]:
    """The global labels named anywhere in the answer (the papers' protocol; audit A1 item 5)."""
    return mentioned(text, _GLOBAL_NAMES)


def _vqa_scores(rows: Sequence[Mapping], paper: bool) -> dict:
    y_true, y_pred, t_bin, p_bin, n_valid = [], [], [], [], 0
    for row in rows:
        ref = parse_vqa(row["reference"])
        if not ref.valid:
            raise ValueError(f"row {row.get('id')!r}: unparseable reference {row['reference']!r}")
        parsed = parse_vqa(row.get("prediction"))
        n_valid += parsed.valid
        y_true.append(ref.labels)
        if paper:  # every label named anywhere; "Finding" unless "No finding" is named
            pred = mentioned_global(row.get("prediction"))
            truth = NO_FINDING not in ref.labels
            decision = NO_FINDING not in pred
        else:  # the known items; an answer with none takes the wrong decision
            pred = parsed.labels
            truth = bool(ref.labels - {NO_FINDING}) or NO_FINDING not in ref.labels
            decision = bool(pred - {NO_FINDING}) or NO_FINDING not in pred if pred else not truth
        y_pred.append(pred)
        t_bin.append(truth)
        p_bin.append(decision)
    n = len(y_true)
    out = {"num_samples": n, "valid_rate": n_valid / n if n else 0.0}
    out.update({f"global/{k}": v for k, v in multilabel_report(y_true, y_pred, GLOBAL_LABELS).items()})
    out.update(binary_report(t_bin, p_bin, "finding"))
    out.update(binary_report([not v for v in t_bin], [not v for v in p_bin], "no_finding"))
    out["finding/accuracy"] = float(np.mean(np.equal(t_bin, p_bin))) if n else 0.0
    return out


def vindr_vqa_metrics(rows: Sequence[Mapping], protocol: str = "clean") -> dict:
    """``[vqa]`` metrics: ``valid_rate`` (a diagnostic), ``num_samples``, the 6-global-label
    :func:`multilabel_report` under ``global/`` and LiteGPT Table 1's binary task.

    Binary task: ``finding/precision|recall|f1|support`` score the finding class,
    ``no_finding/...`` the no-finding class, ``finding/accuracy`` the fraction of images whose
    binary decision is right.

    Clean protocol: the predicted labels are the answer's known items (:func:`parse_vqa`, an
    unknown item drops only itself); an image is *finding* when its labels contain a global
    label other than "No finding"; an answer naming no label takes the wrong decision.
    Papers' protocol (``paper/`` keys): every global label named anywhere in the answer
    (:func:`mentioned_global`); the decision is *finding* unless "No finding" is named, the
    truth *finding* unless the reference names "No finding" (LiteGPT's reference code).
    """
    clean, paper = protocol_parts(protocol)
    out: dict = {}
    if clean:
        out.update(_vqa_scores(rows, paper=False))
    if paper:
        m = _vqa_scores(rows, paper=True)
        out.update(prefixed(PAPER, {k: v for k, v in m.items() if k not in ("num_samples", "valid_rate")}))
        out.setdefault("num_samples", m["num_samples"])
        out.setdefault("valid_rate", m["valid_rate"])
    return out


_BINARY = tuple(f"{c}/{k}" for c in ("finding", "no_finding") for k in ("precision", "recall", "f1", "support"))


class Vqa(Task):
    name = "vqa"
    metric_key = "vindr_vqa"
    instructions = (INSTRUCTION,)
    needs_labels = True
    sweep_columns = ("valid_rate", "global/micro/f1", "global/macro/f1")
    summary_keys = ("num_samples", "valid_rate", "finding/accuracy", *_BINARY)

    def answer(self, target: Target) -> str:
        return vqa_answer(target.labels, no_finding=NO_FINDING in target.labels)

    def answer_corpus(self) -> list[str]:
        return [GLOBAL_PREFIX, ", ".join(GLOBAL_LABELS) + "."]

    def parse(self, text: object) -> Parsed:
        return parse_vqa(text)

    def vocabulary(self, train) -> tuple[str, ...]:
        return GLOBAL_LABELS

    def answer_grammar(self, labels=None) -> Automaton:
        return vqa_grammar(GLOBAL_LABELS if labels is None else tuple(labels))

    def score(self, rows, *, protocol="clean", plus_one=False, keep_tags=False, meteor="nltk", text=True) -> dict:
        """:func:`vindr_vqa_metrics`; with ``text``, LiteGPT tables 4-5's text metrics."""
        metrics = vindr_vqa_metrics(rows, protocol)
        if text:
            clean, paper = protocol_parts(protocol)
            if clean:
                metrics.update(text_section(rows, keep_tags, meteor))
            if paper:
                metrics.update(prefixed(PAPER, text_section(rows, meteor=meteor, paper=True)))
        return metrics

    def report(self, metrics, label=None, detailed=False) -> str:
        paper = paper_view(metrics)
        parts = []
        if paper:
            parts += [classification_table(paper, GLOBAL_LABELS, "global/", "Global labels, papers' protocol (names mentioned)"), ""]
        if "global/micro/f1" in metrics:
            parts += [classification_table(metrics, GLOBAL_LABELS, "global/", "Global labels"), ""]
        return "\n".join([*parts, f"Valid outputs [{self.identifier}]: {metrics['valid_rate']:.4f}"])
