"""Batching: images to floats, prompt suffix + answer to right-padded ids with answer-only labels,
and the prompt alone for generation."""

from __future__ import annotations

import hashlib

import torch

from medgrounder.core.template import IGNORE_INDEX
from medgrounder.tasks import get_task


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, S, S]`` -> float ``[B, 3, S, S]`` in [0, 1] (grey replicated to RGB)."""
    return images.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def image_digest(image: torch.Tensor) -> bytes:
    """A 16-byte digest of an image's pixels (the key of the model's frozen-feature cache)."""
    return hashlib.blake2b(image.contiguous().numpy().data, digest_size=16).digest()


class PromptCollator:
    """``[{image: uint8 [S, S], task, answer, meta, instruction?}] -> batch``.

    An item's ``instruction`` (e.g. a ``[refer]`` question with its phrase, or a phrasing drawn
    from a pool) replaces the task's fixed instruction.

    ``images`` [B, 3, S, S] in [0, 1] (grey replicated to RGB; each tower normalises itself);
    ``text_ids / text_mask / text_labels`` [B, T]: ``</Img> [task] instruction [/INST] answer</s>``,
    right-padded, labels ``-100`` outside the answer; ``prompt_ids / prompt_mask`` [B, T']: the
    suffix alone, right-padded (generation moves the padding in front of the image); with
    ``image_keys=True`` (loaders whose images the model may have cached), ``image_keys``:
    :func:`image_digest` of each image.
    """

    def __init__(self, tokenizer, image_keys: bool = False):
        self.tokenizer = tokenizer
        self.image_keys = image_keys
        self._suffix_cache: dict[tuple[str, str | None], list[int]] = {}

    def suffix_ids(self, task: str, instruction: str | None = None) -> list[int]:
        """The token ids of the prompt's suffix (``</Img> [task] instruction [/INST]``)."""
        key = (task, instruction)
        if key not in self._suffix_cache:
            if len(self._suffix_cache) > 4096:  # phrases make many distinct prompts: bound the cache
                self._suffix_cache.clear()
            self._suffix_cache[key] = self.tokenizer.encode(get_task(task).prompt_suffix(instruction),
                                                          add_special_tokens=False)
        return self._suffix_cache[key]

    def __call__(self, items: list[dict]) -> dict:
        pad = self.tokenizer.pad_token_id
        eos = self.tokenizer.eos_token_id
        images = images_to_float(torch.stack([it["image"] for it in items]))
        suffixes = [self.suffix_ids(it["task"], it.get("instruction")) for it in items]
        answers = self.tokenizer([it["answer"] for it in items], add_special_tokens=False)["input_ids"]
        seqs = [s + a + [eos] for s, a in zip(suffixes, answers, strict=True)]
        t = max(map(len, seqs))
        text_ids = torch.full((len(items), t), pad, dtype=torch.long)
        text_labels = torch.full((len(items), t), IGNORE_INDEX, dtype=torch.long)
        text_mask = torch.zeros((len(items), t), dtype=torch.long)
        for i, (s, seq) in enumerate(zip(suffixes, seqs, strict=True)):
            text_ids[i, : len(seq)] = torch.tensor(seq)
            text_mask[i, : len(seq)] = 1
            text_labels[i, len(s) : len(seq)] = torch.tensor(seq[len(s) :])
        tp = max(map(len, suffixes))
        prompt_ids = torch.full((len(items), tp), pad, dtype=torch.long)
        prompt_mask = torch.zeros((len(items), tp), dtype=torch.long)
        for i, s in enumerate(suffixes):
            prompt_ids[i, : len(s)] = torch.tensor(s)
            prompt_mask[i, : len(s)] = 1
        batch = {
            "images": images,
            "text_ids": text_ids,
            "text_mask": text_mask,
            "text_labels": text_labels,
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "meta": [it["meta"] for it in items],
        }
        if self.image_keys:
            batch["image_keys"] = [image_digest(it["image"]) for it in items]
        return batch
