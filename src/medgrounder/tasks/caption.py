"""``[caption]``: captioning of medical images (PFMVG stage 1, on ROCO, ImageCLEF 2022 and
MIMIC-CXR reports); stage 1 asks with "a randomly selected question from an instruction pool"
(PFMVG section 2.2). The answer is the caption."""

from __future__ import annotations

from medgrounder.tasks.base import Target, Task

CAPTION_INSTRUCTIONS: tuple[str, ...] = (
    "Briefly describe this medical image.",
    "Write a short caption for this image.",
    "Describe the findings shown in this radiograph.",
    "What does this image show? Answer in one or two sentences.",
    "Give a concise description of the image.",
    "Summarize the key observations of this image.",
)


class Caption(Task):
    name = "caption"
    metric_key = "caption"
    instructions = CAPTION_INSTRUCTIONS

    def answer(self, target: Target) -> str:
        if target.text is None:
            raise ValueError(f"caption target {target.image_id!r} has no text")
        return target.text
