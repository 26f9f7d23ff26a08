"""``[vqa]``: diagnosis of VinDr-CXR's 6 global labels (LiteGPT stage 2). The answer is
``Global diseases of this chest radiograph are Pneumonia, Tuberculosis.`` in label order; an
image without a global finding answers "No finding"."""

from __future__ import annotations

from collections.abc import Iterable

from medgrounder.core.labels import GLOBAL_INDEX, GLOBAL_LABELS, NO_FINDING
from medgrounder.tasks.base import Target, Task

GLOBAL_PREFIX = "Global diseases of this chest radiograph are "
# LiteGPT section 4.4, stage 2.
INSTRUCTION = (
    "Given the provided chest X-ray image, which of the following diagnoses are present "
    "(select all that apply): COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or "
    "No Finding?"
)


def vqa_answer(global_labels: Iterable[str]) -> str:
    """Global labels -> the ``[vqa]`` answer (label order; an empty set is "No finding")."""
    names = sorted(set(global_labels), key=lambda n: GLOBAL_INDEX[n]) or [GLOBAL_LABELS[-1]]
    return GLOBAL_PREFIX + ", ".join(names) + "."


class Vqa(Task):
    name = "vqa"
    metric_key = "vindr_vqa"
    instructions = (INSTRUCTION,)

    def answer(self, target: Target) -> str:
        return vqa_answer(g for g in target.labels if g != NO_FINDING)

    def answer_corpus(self) -> list[str]:
        return [GLOBAL_PREFIX, ", ".join(GLOBAL_LABELS) + "."]
