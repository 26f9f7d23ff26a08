"""What every task shares: the :class:`Target` a dataset hands a task for one sample, and the
:class:`Task` base class (one object per task owns its identifier, instructions, answers,
parser, scoring, baseline, report section and figure boxes; see the package docstring).

Answers are deterministic functions of the labels, so the same data gives the same targets.
Scoring works on ``predictions.jsonl`` rows (design section 6); a row's boxes are in original
pixels, a parsed answer's on the 0-100 grid.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medgrounder.core.automaton import Automaton
from medgrounder.core.boxes import Box, GridBox, from_grid
from medgrounder.core.template import prompt_suffix, render_prompt
from medgrounder.metrics.text import paper_text_metrics, text_metrics
from medgrounder.tasks.parse import Pair, Parsed

__all__ = ["BASELINE", "PAPER", "PROTOCOLS", "Target", "Task", "class_prior_boxes", "paper_view", "protocol_parts",
           "sorted_boxes", "text_section"]

#: the prefix of a baseline's keys in a task's metrics (``baseline/acc@0.3``)
BASELINE = "baseline/"
TEXT = "text/"
#: the prefix of the papers' protocol's keys in a task's metrics (``paper/acc@0.3``,
#: ``baseline/paper/acc@0.3``); the clean protocol's keys have none (design section 7)
PAPER = "paper/"
#: the evaluation protocols (the run's ``protocol`` key, ``score --protocol``): ``clean`` the
#: project's definitions, ``paper`` the reference code's measurement, ``both`` each beside the other
PROTOCOLS = ("clean", "paper", "both")


def protocol_parts(protocol: str) -> tuple[bool, bool]:
    """``(clean, paper)``: which protocols' keys ``protocol`` asks for."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return protocol in ("clean", "both"), protocol in ("paper", "both")


def paper_view(metrics: Mapping) -> dict:
    """The papers' protocol's keys of a metrics section without their :data:`PAPER` prefix."""
    return {k.removeprefix(PAPER): v for k, v in metrics.items() if k.startswith(PAPER)}


def prefixed(prefix: str, metrics: Mapping) -> dict:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


@dataclass(frozen=True)
class Target:
    """One sample's labels as a dataset hands them to its task.

    ``findings``: ``(class or category, box)`` on the 0-100 grid of what the model sees (the
    whole image, or a training crop; a datamodule's ``targets(split)`` gives whole images);
    ``labels``: global labels (``[vqa]``); ``text``: the caption (``[caption]``) or the phrase
    to ground (``[refer]``). ``width`` / ``height``: the original image in pixels.
    """

    image_id: str = ""
    width: int = 0
    height: int = 0
    findings: tuple[tuple[str, GridBox], ...] = ()
    labels: tuple[str, ...] = ()
    text: str | None = None


class Task:
    """One task: the identifier in the prompt (``[identify]``), its instruction pool, and the
    answer a target gives.

    ``name`` is the stage's ``task`` and the ``task`` field of a ``predictions.jsonl`` row;
    ``identifier`` the token in the prompt; ``metric_key`` the section of ``metrics.json``.
    ``instructions`` is the pool training draws from; evaluation and ``predict`` use its first
    phrasing, so a test prompt is a deterministic function of the sample.
    """

    name: ClassVar[str]
    metric_key: ClassVar[str]
    instructions: ClassVar[tuple[str, ...]]
    #: whether the instruction carries a phrase of the sample (``target.text``)
    takes_phrase: ClassVar[bool] = False
    #: whether the answer locates findings with boxes (``target.findings``)
    localizes: ClassVar[bool] = False
    #: whether the answer names the global labels (``target.labels``)
    needs_labels: ClassVar[bool] = False
    #: the fields :meth:`score` reads from a ``predictions.jsonl`` row
    row_fields: ClassVar[tuple[str, ...]] = ("prediction", "reference")
    #: whether :meth:`score` applies to rows of any task (text metrics do)
    scores_any_row: ClassVar[bool] = False
    #: columns of a sweep's ``summary.md`` (keys of this task's metrics section)
    sweep_columns: ClassVar[tuple[str, ...]] = ()
    #: the scalar metrics ``score`` prints first
    summary_keys: ClassVar[tuple[str, ...]] = ("num_samples",)
    #: whether evaluation draws test images with the ground-truth and predicted boxes
    draws_figure: ClassVar[bool] = False
    #: the node of :meth:`answer_grammar` that is the "nothing found" answer: rows report the
    #: probability of going there as ``no_finding_score`` (None: the task has no such answer)
    no_answer_node: ClassVar[str | None] = None

    def __init__(self, identifier: str | None = None):
        self.identifier = identifier or self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(identifier={self.identifier!r})"

    def instruction(self, target: Target | None = None, rng: np.random.Generator | None = None) -> str:
        """The instruction of one sample: a phrasing drawn from the pool with ``rng`` (one draw,
        only when the pool has more than one), else the first."""
        return self.instructions[self.choose(rng)]

    def choose(self, rng: np.random.Generator | None) -> int:
        if rng is None or len(self.instructions) == 1:
            return 0
        return int(rng.integers(len(self.instructions)))

    def answer(self, target: Target) -> str:
        raise NotImplementedError

    def prompt_suffix(self, instruction: str | None = None) -> str:
        """Text after the image embeddings (``instruction`` defaults to the first phrasing)."""
        return prompt_suffix(self.identifier, instruction or self.instructions[0])

    def prompt(self, instruction: str | None = None) -> str:
        """The whole prompt as written to ``predictions.jsonl``."""
        return render_prompt(self.identifier, instruction or self.instructions[0])

    # The tiny tokenizer learns its merges from every task's prompts and, once per task class
    # (``[grounding]`` shares ``[identify]``'s answers), its answer phrases.
    def prompt_corpus(self) -> list[str]:
        """Prompt suffixes: the evaluation prompt, then each phrasing of a larger pool."""
        pool = self.instructions if len(self.instructions) > 1 else ()
        return [self.prompt_suffix(), *(self.prompt_suffix(i) for i in pool)]

    def answer_corpus(self) -> list[str]:
        """Fixed phrases of the answers."""
        return []

    # ------------------------------------------------------------------ constrained decoding
    def vocabulary(self, train: Sequence[Target]) -> tuple[str, ...] | None:
        """The labels a constrained answer may name, from the training targets (the dataset's own
        vocabulary); None where the grammar has no labels."""
        return None

    def answer_grammar(self, labels: Sequence[str] | None = None) -> Automaton | None:
        """The answers this task writes, as a character automaton (``model.constrained_decoding``;
        ``labels``: :meth:`vocabulary`, None for every label); None: free text."""
        return None

    def pairs(self, text: object) -> list[Pair]:
        """The scored boxes of an answer, in text order, with the spans their confidence is read
        from (``prediction_boxes``); ``[]`` for a task without boxes."""
        return []

    # ------------------------------------------------------------------ evaluation
    def parse(self, text: object) -> Parsed:
        """A generated answer -> labels and grid boxes; never raises."""
        raise NotImplementedError

    def score(self, rows: Sequence[Mapping], *, protocol: str = "clean", plus_one: bool = False,
              keep_tags: bool = False, meteor: str | None = "nltk", text: bool = True) -> dict:
        """This task's section of ``metrics.json`` for ``rows``. Every task takes the same options
        (a caller passes them without knowing the task) and uses those that apply: ``protocol``
        (:data:`PROTOCOLS`): the clean keys, the papers' under :data:`PAPER`, or both;
        ``plus_one`` LiteGPT's +1 IoU on the grid and ``keep_tags`` / ``meteor`` the text metrics'
        settings (of the clean keys: the papers' protocol fixes its own); ``text``: add the text
        metrics of the answers under ``text/`` (where the task has them)."""
        raise NotImplementedError

    def baseline(self, train: Sequence[Target], rows: Sequence[Mapping], protocol: str = "clean") -> dict:
        """The metrics of a baseline fitted on the training targets, keys prefixed with
        :data:`BASELINE` (and :data:`PAPER` for the papers' protocol); ``{}`` when the task has none."""
        return {}

    def budget_answers(self, train: Sequence[Target]) -> list[str]:
        """The training answers a generation budget must cover: those of the targets this task
        trains on (a localizing task trains on the targets with findings)."""
        return [self.answer(t) for t in train if not self.localizes or t.findings]

    def report(self, metrics: Mapping, label: str | None = None, detailed: bool = False) -> str:
        """This task's markdown section of ``tables.md`` (and of ``score``'s output); ``label``
        names the model's rows (default ``model [identifier]``); ``detailed`` adds the variants
        ``score`` prints (the strict one-to-one accuracy); ``""`` when it has none."""
        return ""

    def text_scores(self, metrics: Mapping) -> dict:
        """The text metrics in this task's section (a row of the shared text table)."""
        return {k.removeprefix(TEXT): v for k, v in metrics.items() if k.startswith(TEXT)}

    def headline(self, metrics: Mapping) -> dict:
        """The numbers worth a log line."""
        return {k: round(v, 4) for k, v in metrics.items()
                if "/" not in k and isinstance(v, int | float) and not isinstance(v, bool)}

    def predicted_boxes(self, row: Mapping) -> list[tuple[str, Box]]:
        """``(label, box)`` of every box parsed from the row's prediction (valid or not), in the
        original image's pixels."""
        w, h = row["image_width"], row["image_height"]
        return [(name, from_grid(g, w, h)) for name, g in self.parse(row.get("prediction")).findings]

    #: the ``score --export`` formats of this task's scored boxes (:meth:`export`)
    exports: ClassVar[tuple[str, ...]] = ()

    def export(self, rows: Sequence[Mapping], kind: str) -> dict[str, object]:
        """The files of export ``kind`` (one of :attr:`exports`) of the rows' ``prediction_boxes``:
        ``{role: content}``, the main file under ``""`` first, then e.g. ``"gt"``, ``"settings"``;
        text is written as is, anything else as JSON (``score`` names and writes them)."""
        raise ValueError(f"{self.metric_key} has no {kind!r} export (it has: {', '.join(self.exports) or 'none'})")

    def gt_boxes(self, row: Mapping) -> list[tuple[str, Sequence[float]]]:
        """``(label, pixel box)`` of the row's ground truth, as a figure shows them."""
        return []

    def figure_title(self, row: Mapping) -> str:
        return str(row["image_id"])[:12]

    def _label(self, label: str | None) -> str:
        return label or f"model [{self.identifier}]"


def text_section(rows: Sequence[Mapping], keep_tags: bool = False, meteor: str | None = "nltk",
                 paper: bool = False) -> dict:
    """The text metrics of the rows' answers under ``text/`` (LiteGPT tables 4-5): the clean ones
    (boxes and ``<p>`` tags stripped, :func:`text_metrics`) or, with ``paper``, the reference
    code's (:func:`paper_text_metrics`, ``keep_tags`` does not apply)."""
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    if paper:
        m = paper_text_metrics(preds, refs, meteor_backend=meteor)
    else:
        m = text_metrics(preds, refs, keep_tags=keep_tags, meteor_backend=meteor)
    return {f"{TEXT}{k}": v for k, v in m.items() if k != "num_samples"}


def class_prior_boxes(findings: Iterable[tuple[str, Sequence[int]]]) -> tuple[dict[str, GridBox], GridBox]:
    """The mean grid box of each class over ``(class, grid box)`` pairs (coordinates rounded half
    up), and the mean of every box for a class not seen: the mean-box baselines' answers."""
    by_class: dict[str, list[Sequence[int]]] = defaultdict(list)
    every: list[Sequence[int]] = []
    for c, box in findings:
        by_class[c].append(box)
        every.append(box)
    if not every:
        raise ValueError("a mean-box baseline needs at least one training box")

    def mean(boxes: list[Sequence[int]]) -> GridBox:
        return tuple(int(np.floor(v + 0.5)) for v in np.mean(np.asarray(boxes, float), axis=0))

    return {c: mean(b) for c, b in by_class.items()}, mean(every)


def sorted_boxes(boxes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Grid boxes as int tuples, left to right, then top to bottom."""
    return sorted(tuple(int(v) for v in b) for b in boxes)
