"""The chat template shared by data and model (MiniGPT-v2's Llama-2 chat template)::

    [INST] <Img>{image embeddings}</Img> [identifier] instruction [/INST] answer</s>

The model embeds ``PROMPT_PREFIX``, then the image, then the suffix; ``IMAGE_PLACEHOLDER`` stands
for the image in the prompts written to ``predictions.jsonl``.
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "IMAGE_PLACEHOLDER", "PROMPT_PREFIX", "PROMPT_SUFFIX", "prompt_suffix", "render_prompt"]

PROMPT_PREFIX = "[INST] <Img>"
PROMPT_SUFFIX = "</Img> {identifier} {instruction} [/INST]"
IMAGE_PLACEHOLDER = "<ImageHere>"
#: label of the positions that carry no loss (the prompt, the padding)
IGNORE_INDEX = -100


def prompt_suffix(identifier: str, instruction: str) -> str:
    """Text after the image embeddings, e.g. ``</Img> [identify] Please describe ... [/INST]``."""
    return PROMPT_SUFFIX.format(identifier=f"[{identifier}]", instruction=instruction)


def render_prompt(identifier: str, instruction: str) -> str:
    """The whole prompt as text, the image as :data:`IMAGE_PLACEHOLDER`."""
    return f"{PROMPT_PREFIX}{IMAGE_PLACEHOLDER}{prompt_suffix(identifier, instruction)}"
