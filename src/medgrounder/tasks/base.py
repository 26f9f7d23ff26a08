"""What every task shares: the :class:`Target` a dataset hands a task for one sample, and the
:class:`Task` base class (one object per task owns its identifier, instructions and answers;
see the package docstring).

Answers are deterministic functions of the labels, so the same data gives the same targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from medgrounder.core.boxes import GridBox
from medgrounder.core.template import prompt_suffix, render_prompt

__all__ = ["Target", "Task"]


@dataclass(frozen=True)
class Target:
    """One sample's labels as a dataset hands them to its task.

    ``findings``: ``(class or category, box)`` on the 0-100 grid of what the model sees (the
    whole image, or a training crop); ``labels``: global labels (``[vqa]``); ``text``: the caption
    (``[caption]``) or the phrase to ground (``[refer]``). ``width`` / ``height``: the original
    image in pixels.
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


def sorted_boxes(boxes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Grid boxes as int tuples, left to right, then top to bottom."""
    return sorted(tuple(int(v) for v in b) for b in boxes)
