"""``[refer]``: phrase grounding on MS-CXR (PFMVG stage 2). The prompt combines a question from
a pool with the phrase ("[refer] [Instruction] [label text]", PFMVG section 2.2); the answer is
every box of the phrase, sorted (left to right, then top to bottom), joined with ``<delim>``:
``{<x1><y1><x2><y2>}<delim>{...}``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medgrounder.core.grammar import BOX_DELIM, format_box
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.tasks.base import Target, Task, sorted_boxes

#: ``{}`` is replaced by the label text (the phrase to ground).
REFER_INSTRUCTIONS: tuple[str, ...] = (
    "Give the bounding box of the region described by: {}",
    "Where is the following finding in this image? {}",
    "Locate the area that this phrase refers to: {}",
    "Please output the location of {}",
    "Which region of the chest radiograph shows {}?",
    "Find the bounding box for this description: {}",
)


def refer_instruction(label_text: str, choice: int = 0) -> str:
    """Phrasing ``choice`` of :data:`REFER_INSTRUCTIONS` with the label text filled in
    (surrounding whitespace and a final period of the text dropped)."""
    text = " ".join(str(label_text).split()).rstrip(".")
    if not text:
        raise ValueError("a [refer] instruction needs a non-empty label text")
    return REFER_INSTRUCTIONS[choice].format(text)


def refer_answer(grid_boxes: Iterable[Sequence[int]]) -> str:
    """Grid boxes -> the ``[refer]`` answer."""
    boxes = sorted_boxes(list(grid_boxes))
    if not boxes:
        raise ValueError("a [refer] answer needs at least one box")
    return BOX_DELIM.join(format_box(b) for b in boxes)


class Refer(Task):
    name = "refer"
    metric_key = "mscxr_refer"
    instructions = REFER_INSTRUCTIONS
    takes_phrase = True

    def instruction(self, target: Target | None = None, rng: np.random.Generator | None = None) -> str:
        if target is None or not target.text:
            raise ValueError("a [refer] instruction needs the phrase to ground (target.text)")
        return refer_instruction(target.text, self.choose(rng))

    def answer(self, target: Target) -> str:
        return refer_answer(box for _, box in target.findings)

    def prompt_suffix(self, instruction: str | None = None) -> str:
        if instruction is None:
            raise ValueError("a [refer] prompt needs its instruction (with the phrase)")
        return super().prompt_suffix(instruction)

    def prompt_corpus(self) -> list[str]:
        # no prompt without a phrase: every phrasing of the pool with an example phrase
        return [self.prompt_suffix(refer_instruction("right lower pleural effusion", k))
                for k in range(len(self.instructions))]

    def answer_corpus(self) -> list[str]:
        return [" ".join(MSCXR_CATEGORIES).lower()]
