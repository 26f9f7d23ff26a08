"""Visual token merge (MiniGPT-v2 section 3; LiteGPT section 3.1).

Concatenating ``k`` adjacent tokens along channels shortens the sequence the LLM reads:
``[B, P, C] -> [B, P/k, k*C]``.

- ``flat``: groups of ``k`` consecutive tokens in the concatenated sequence, as the reference
  code's ``view(B, P/k, k*C)``. For LiteGPT's pair (196 + 49 tokens, k = 5) groups wrap across
  image rows and one group mixes the last BiomedCLIP tokens with the first PubMedCLIP ones;
  this is the reproduction default.
- ``per_encoder``: each tower's square grid is merged separately into spatially coherent
  groups (``k = 4``: 2 x 2 blocks; otherwise ``k`` consecutive tokens of one row). Every tower's
  count must divide by ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MERGE_MODES = ("flat", "per_encoder")


def resolve_merge(merge: int | str, tokens_per_tower: Sequence[int], visual_tokens: int | None = None) -> int:
    """``model.merge``: an integer, or ``auto``: the factor that merges the towers' tokens into
    ``visual_tokens`` (so a sweep over towers keeps LiteGPT's 49: fused 245 / 5, BiomedCLIP 196 / 4,
    PubMedCLIP 49 / 1)."""
    if merge != "auto":
        return int(merge)
    total = sum(tokens_per_tower)
    if not visual_tokens or total % visual_tokens:
        raise ValueError(f"model.merge=auto: the towers' {total} tokens {list(tokens_per_tower)} do not merge into "
                         f"model.visual_tokens={visual_tokens}; set model.merge to an integer")
    return total // visual_tokens


def merged_token_count(tokens_per_tower: Sequence[int], k: int, mode: str = "flat") -> int:
    """Number of visual tokens the LLM sees; raises ``ValueError`` when ``k`` does not divide."""
    if mode not in MERGE_MODES:
        raise ValueError(f"merge mode must be one of {MERGE_MODES}, got {mode!r}")
    counts = [sum(tokens_per_tower)] if mode == "flat" else list(tokens_per_tower)
    for n in counts:
        if n % k:
            raise ValueError(
                f"{mode} merge by {k} needs a token count divisible by {k}, got {n} "
                f"(tokens per tower: {list(tokens_per_tower)})"
            )
    return sum(counts) // k


def _merge_grid(x: torch.Tensor, k: int) -> torch.Tensor:
    b, p, c = x.shape
    side = math.isqrt(p)
    if k == 4 and side * side == p and side % 2 == 0:
        # [B, S*S, C] -> [B, S/2, 2, S/2, 2, C] -> 2x2 blocks in raster order of blocks.
        x = x.view(b, side // 2, 2, side // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, p // k, k * c)


def merge_tokens(x: torch.Tensor, k: int, mode: str = "flat", tokens_per_tower: Sequence[int] | None = None) -> torch.Tensor:
    """``[B, P, C] -> [B, P/k, k*C]``."""
    tokens_per_tower = list(tokens_per_tower or [x.shape[1]])
    merged_token_count(tokens_per_tower, k, mode)
    if k == 1:
        return x
    if mode == "flat":
        b, p, c = x.shape
        return x.reshape(b, p // k, k * c)
    parts = torch.split(x, tokens_per_tower, dim=1)
    return torch.cat([_merge_grid(part, k) for part in parts], dim=1)
