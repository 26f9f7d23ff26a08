"""``[caption]``: captioning of medical images (PFMVG stage 1, on ROCO, ImageCLEF 2022 and
MIMIC-CXR reports); stage 1 asks with "a randomly selected question from an instruction pool"
(PFMVG section 2.2). The answer is the caption, scored with the text metrics of LiteGPT
tables 4-5 (:func:`~medgrounder.metrics.text.text_metrics`)."""

from __future__ import annotations

from medgrounder.metrics.text import TEXT_KEYS, paper_text_metrics, text_metrics
from medgrounder.tasks.base import PAPER, Target, Task, prefixed, protocol_parts
from medgrounder.tasks.parse import Parsed

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
    scores_any_row = True

    def answer(self, target: Target) -> str:
        if target.text is None:
            raise ValueError(f"caption target {target.image_id!r} has no text")
        return target.text

    def parse(self, text: object) -> Parsed:
        """Any non-empty text is a caption."""
        return Parsed(isinstance(text, str) and bool(text.strip()))

    def score(self, rows, *, protocol="clean", plus_one=False, keep_tags=False, meteor="nltk", text=True) -> dict:
        """:func:`~medgrounder.metrics.text.text_metrics` of the predictions against the references
        (the papers' protocol: :func:`~medgrounder.metrics.text.paper_text_metrics` under ``paper/``)."""
        clean, paper = protocol_parts(protocol)
        preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
        out: dict = {"num_samples": len(rows)}
        if clean:
            out.update(text_metrics(preds, refs, keep_tags=keep_tags, meteor_backend=meteor))
        if paper:
            m = paper_text_metrics(preds, refs, meteor_backend=meteor)
            out.update(prefixed(PAPER, {k: v for k, v in m.items() if k != "num_samples"}))
        return out

    def text_scores(self, metrics) -> dict:
        return {k: v for k, v in metrics.items() if k in TEXT_KEYS}
