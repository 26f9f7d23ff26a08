"""Prompt template, task instructions and answer strings (LiteGPT appendix B, design section 5).

The LLM input is the Llama-2 chat template of MiniGPT-v2::

    [INST] <Img>{image embeddings}</Img> [task] instruction [/INST] answer</s>

Answers are deterministic functions of the labels so the same data gives the same targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medgrounder.core import template
from medgrounder.core.grammar import BOX_DELIM, format_box
from medgrounder.core.labels import GLOBAL_INDEX, GLOBAL_LABELS, LOCAL_INDEX

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

# PFMVG section 2.2: stage 1 asks for a caption with "a randomly selected question from an
# instruction pool"; stage 2 combines a grounding question from a pool with the MS-CXR label text
# ("[refer] [Instruction] [label text]"). Training draws from the pools; evaluation and
# prediction use the first phrasing, so a test prompt is a deterministic function of the sample.
CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Briefly describe this medical image.",
    "Write a short caption for this image.",
    "Describe the findings shown in this radiograph.",
    "What does this image show? Answer in one or two sentences.",
    "Give a concise description of the image.",
    "Summarize the key observations of this image.",
)
#: ``{}`` is replaced by the label text (the phrase to ground).
REFER_INSTRUCTIONS: tuple[str, ...] = (
    "Give the bounding box of the region described by: {}",
    "Where is the following finding in this image? {}",
    "Locate the area that this phrase refers to: {}",
    "Please output the location of {}",
    "Which region of the chest radiograph shows {}?",
    "Find the bounding box for this description: {}",
)
INSTRUCTIONS["caption"] = CAPTION_INSTRUCTIONS[0]

LOCAL_PREFIX = "Local diseases of this chest radiograph are "
GLOBAL_PREFIX = "Global diseases of this chest radiograph are "
NO_LOCAL_FINDINGS = "The chest radiograph shows no findings."


def prompt_suffix(task: str, instruction: str | None = None) -> str:
    """Text after the image embeddings, e.g. ``</Img> [identify] Please describe ... [/INST]``."""
    return template.prompt_suffix(task, instruction or INSTRUCTIONS[task])


def refer_instruction(label_text: str, choice: int = 0) -> str:
    """The ``[refer]`` instruction: phrasing ``choice`` of :data:`REFER_INSTRUCTIONS` with the
    label text filled in (surrounding whitespace and a final period of the text dropped)."""
    text = " ".join(str(label_text).split()).rstrip(".")
    if not text:
        raise ValueError("a [refer] instruction needs a non-empty label text")
    return REFER_INSTRUCTIONS[choice].format(text)


def refer_answer(grid_boxes: Iterable[Sequence[int]]) -> str:
    """Grid boxes -> the ``[refer]`` answer ``{<x1><y1><x2><y2>}<delim>{...}``: every box of the
    phrase, sorted (left to right, then top to bottom), joined with :data:`BOX_DELIM`."""
    boxes = sorted(tuple(int(v) for v in b) for b in grid_boxes)
    if not boxes:
        raise ValueError("a [refer] answer needs at least one box")
    return BOX_DELIM.join(format_box(b) for b in boxes)


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
