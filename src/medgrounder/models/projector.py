"""Vision-to-language projection: ``[B, M, k*C] -> [B, M, D_llm]``.

``hidden=None``: one Linear (MiniGPT-v2 / PFMVG, 5632 -> 4096). ``hidden=H``: Linear-GELU-Linear
(LiteGPT, 3840 -> 5632 -> 4096); the last Linear has MiniGPT-v2's ``llama_proj`` shape so it can
start from those weights.
"""

from __future__ import annotations

from torch import nn


def build_projector(in_dim: int, out_dim: int, hidden: int | None = None) -> nn.Sequential:
    if hidden is None:
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
