"""Prompt template, task instructions and answer strings (LiteGPT appendix B, design section 5).

The LLM input is the Llama-2 chat template of MiniGPT-v2::

    [INST] <Img>{image embeddings}</Img> [task] instruction [/INST] answer</s>

Answers are deterministic functions of the labels so the same data gives the same targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medgrounder.data.boxes import format_box
from medgrounder.data.labels import GLOBAL_INDEX, GLOBAL_LABELS, LOCAL_INDEX

PROMPT_PREFIX = "[INST] <Img>"
PROMPT_SUFFIX = "</Img> {task} {instruction} [/INST]"

INSTRUCTIONS: dict[str, str] = {
    # LiteGPT section 4.4, stage 1 (localization) and stage 2 (diagnosis).
    "identify": (
        "Please describe the critical findings along with their localized bounding boxes in the "
        "radiological image of a chest as much detail as possible. If there are no findings, "
        "state that the chest radiograph shows no findings."
    ),
    "vqa": (
        "Given the provided chest X-ray image, which of the following diagnoses are present "
        "(select all that apply): COPD, Lung Tumor, Pneumonia, Tuberculosis, Other Disease, or "
        "No Finding?"
    ),
}
# Table 6 ablation: the same localization task under MiniGPT-v2's [grounding] identifier.
INSTRUCTIONS["grounding"] = INSTRUCTIONS["identify"]

LOCAL_PREFIX = "Local diseases of this chest radiograph are "
GLOBAL_PREFIX = "Global diseases of this chest radiograph are "
NO_LOCAL_FINDINGS = "The chest radiograph shows no findings."
BOX_DELIM = "<delim>"


def prompt_suffix(task: str, instruction: str | None = None) -> str:
    """Text after the image embeddings, e.g. ``</Img> [identify] Please describe ... [/INST]``."""
    return PROMPT_SUFFIX.format(task=f"[{task}]", instruction=instruction or INSTRUCTIONS[task])


def identify_answer(findings: Iterable[tuple[str, Sequence[int]]]) -> str:
    """``[(class, grid_box), ...]`` -> the ``[identify]`` answer.

    Classes appear in label order, boxes of one class left to right (then top to bottom) and
    joined with ``<delim>``: ``Local diseases of this chest radiograph are <p>Aortic
    enlargement</p> {<53><28><65><36>}, <p>Cardiomegaly</p> {<38><49><82><63>}.``
    """
    by_class: dict[str, list[tuple[int, ...]]] = {}
    for name, box in findings:
        by_class.setdefault(name, []).append(tuple(int(v) for v in box))
    if not by_class:
        return NO_LOCAL_FINDINGS
    parts = []
    for name in sorted(by_class, key=lambda n: LOCAL_INDEX[n]):
        boxes = BOX_DELIM.join(format_box(b) for b in sorted(by_class[name]))
        parts.append(f"<p>{name}</p> {boxes}")
    return LOCAL_PREFIX + ", ".join(parts) + "."


def vqa_answer(global_labels: Iterable[str]) -> str:
    """Global labels -> ``Global diseases of this chest radiograph are Pneumonia, Tuberculosis.``
    (label order; an empty set is "No finding")."""
    names = sorted(set(global_labels), key=lambda n: GLOBAL_INDEX[n]) or [GLOBAL_LABELS[-1]]
    return GLOBAL_PREFIX + ", ".join(names) + "."
