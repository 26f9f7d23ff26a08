"""EVA ViT-g in the layout of BLIP-2's ``eva_vit_g.pth`` (the MiniGPT-v2 / PFMVG image encoder).

BLIP-2 (LAVIS) builds EVA-CLIP's ViT-g with 39 of its 40 blocks (the second-last layer's
features) and no final norm: width 1408, 16 heads of 88, MLP 6144 (``int(1408 * 4.3637)``),
patch 14, LayerNorm eps 1e-6, a CLS token, learned absolute position embeddings, no layer scale
and no relative position bias. MiniGPT-v2 runs it at 448 px with the position table
interpolated bicubically from 16 x 16 to 32 x 32, so an image gives 1 + 1024 tokens.

Checkpoint keys (``torch.load("eva_vit_g.pth")``, a flat state dict)::

    cls_token                      [1, 1, 1408]
    pos_embed                      [1, 1 + 16*16, 1408]     (224 px grid, interpolated on load)
    patch_embed.proj.weight/bias   [1408, 3, 14, 14] / [1408]
    blocks.{i}.norm1.weight/bias   [1408]
    blocks.{i}.attn.qkv.weight     [3*1408, 1408]           (no bias: q_bias and v_bias instead,
    blocks.{i}.attn.q_bias/v_bias  [1408]                    the key bias is zero)
    blocks.{i}.attn.proj.weight/bias
    blocks.{i}.norm2.weight/bias
    blocks.{i}.mlp.fc1.weight/bias [6144, 1408]
    blocks.{i}.mlp.fc2.weight/bias [1408, 6144]

This module keeps those names, so the file loads with :func:`load_eva_checkpoint` through an
identity key map; blocks past ``depth`` and a final ``norm`` / ``fc_norm`` / ``head`` (present
in full EVA-CLIP checkpoints) are dropped by name, and any other difference raises.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """``[B, 3, S, S] -> [B, (S/p)^2, C]`` by a stride-``p`` convolution (raster order)."""

    def __init__(self, image_size: int, patch_size: int, width: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with EVA's split bias: ``q_bias`` and ``v_bias`` learned, the key
    bias fixed at zero. ``[B, N, C] -> [B, N, C]``."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} does not divide into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, N, C/H]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, num_heads: int, mlp_hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EVAViT(nn.Module):
    """``[B, 3, S, S] -> [B, 1 + (S/p)^2, C]`` (CLS first, no final norm).

    Defaults are BLIP-2's ViT-g: ``depth=39, width=1408, num_heads=16, mlp_hidden=6144,
    patch_size=14``. ``gradient_checkpointing`` recomputes blocks in the backward pass.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1408,
        depth: int = 39,
        num_heads: int = 16,
        mlp_hidden: int = 6144,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self.width = width
        self.depth = depth
        self.patch_embed = PatchEmbed(image_size, patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, width))
        self.blocks = nn.ModuleList(Block(width, num_heads, mlp_hidden) for _ in range(depth))
        self.gradient_checkpointing = gradient_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        """Random init as LAVIS: truncated normal 0.02, zero biases, and the residual output
        projections of block ``i`` scaled by ``1 / sqrt(2 i)``."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            for i, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_((2.0 * i) ** 0.5)
                blk.mlp.fc2.weight.div_((2.0 * i) ** 0.5)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)                                        # [B, P, C]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)     # [B, 1 + P, C]
        x = x + self.pos_embed
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1, 1 + g*g, C] -> [1, 1 + grid*grid, C]``: the CLS entry kept, the patch table resized
    bicubically (``align_corners=False``, as BLIP-2 / MiniGPT-v2)."""
    n = pos_embed.shape[1] - 1
    old = math.isqrt(n)
    if old * old != n:
        raise ValueError(f"pos_embed has {n} patch entries, not a square grid")
    if old == grid:
        return pos_embed
    cls, table = pos_embed[:, :1], pos_embed[:, 1:]
    table = table.float().reshape(1, old, old, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=(grid, grid), mode="bicubic", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, table], dim=1)


# Keys of a full EVA-CLIP visual checkpoint that BLIP-2's truncated ViT does not use.
_DROPPED = re.compile(r"^(norm|fc_norm|head)\.")


def eva_key_map(state_dict: dict[str, torch.Tensor], model: EVAViT) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint state dict -> ours (``module.`` / ``visual.`` prefixes stripped, blocks past
    ``depth`` and a final norm / head dropped, ``pos_embed`` interpolated to our grid).

    Returns the mapped dict and the dropped keys. Raises ``KeyError`` listing any expected key
    missing and any unexpected key."""
    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        name = key
        for prefix in ("module.", "visual.", "visual_encoder."):
            name = name.removeprefix(prefix)
        block = re.match(r"^blocks\.(\d+)\.", name)
        if (block and int(block.group(1)) >= model.depth) or _DROPPED.match(name):
            dropped.append(key)
            continue
        mapped[name] = value
    if "pos_embed" in mapped:
        mapped["pos_embed"] = interpolate_pos_embed(mapped["pos_embed"], model.patch_embed.grid)
    expected = set(model.state_dict())
    missing = sorted(expected - set(mapped))
    unexpected = sorted(set(mapped) - expected)
    if missing or unexpected:
        raise KeyError(
            f"EVA ViT checkpoint does not match the {model.depth}-block, {model.width}-wide model: "
            f"missing {missing or 'none'}; unexpected {unexpected or 'none'}"
        )
    own = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
             for k, v in mapped.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError("EVA ViT checkpoint shapes differ: " + "; ".join(wrong))
    return mapped, dropped


def load_eva_checkpoint(model: EVAViT, path: str | Path) -> list[str]:
    """Load ``eva_vit_g.pth`` (or a file in its layout) strictly; returns the dropped keys."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"EVA ViT-g weights {path} not found. Download BLIP-2's eva_vit_g.pth from "
            "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    mapped, dropped = eva_key_map(state, model)
    model.load_state_dict(mapped, strict=True)
    return dropped
