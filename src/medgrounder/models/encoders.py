"""Vision towers: an image batch in, patch tokens out (CLS and other prefix tokens dropped).

Every tower takes ``[B, 3, H, W]`` floats in [0, 1] at its own ``image_size`` and applies its
own normalisation, so preprocessing travels with the encoder config (as in timm / open_clip)
and a fused pair of towers with different statistics still sees what each was trained on.

- :class:`TimmViT`: a timm VisionTransformer, the trunk of BiomedCLIP's open_clip model
  (``visual.trunk.forward_features(x)[:, 1:]``: 196 x 768 at 224 for ViT-B/16).
- :class:`HFCLIPVision`: a transformers ``CLIPVisionModel`` as PubMedCLIP ships it
  (``last_hidden_state[:, 1:]``: 49 x 768 at 224 for ViT-B/32).
- :class:`FusedTowers`: LiteGPT's pair, tokens concatenated: ``[B, P1, C] + [B, P2, C] -> [B, P1+P2, C]``.

Tiny presets build the same classes from a small config with random weights; real presets load
from a hub id or a local directory through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table ``[side * side, dim]`` in raster order (MAE style):
    the first half of the channels encodes the column, the second half the row."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    freqs = 1.0 / (10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4)))
    coords = torch.arange(side, dtype=torch.float64)
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")

    def enc(v: torch.Tensor) -> torch.Tensor:
        angles = v.reshape(-1, 1) * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([enc(xs), enc(ys)], dim=1).float()


def _init_position_table(param: torch.Tensor, prefix_tokens: int, how: str) -> None:
    """Randomly initialised towers have near-zero learned position embeddings (std 0.02), so
    their patch tokens barely say where they are; pretrained towers learned it. ``sincos``
    gives a tiny random tower that property at init."""
    if how == "default":
        return
    if how != "sincos":
        raise ValueError(f"pos_embed_init must be 'default' or 'sincos', got {how!r}")
    table = param.data.view(-1, param.shape[-1])
    n = table.shape[0] - prefix_tokens
    side = math.isqrt(n)
    with torch.no_grad():
        table[prefix_tokens:] = sincos_2d(side, table.shape[1]).to(table.dtype)


class VisionTower(nn.Module):
    """Base class: normalisation plus ``image_size``, ``num_tokens`` and ``width`` attributes."""

    image_size: int
    num_tokens: int
    width: int

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{type(self).__name__} expects {self.image_size}x{self.image_size} images, "
                f"got {tuple(images.shape[-2:])}"
            )
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def tower_names(self) -> list[str]:
        return [type(self).__name__]


class TimmViT(VisionTower):
    """A timm ViT. ``[B, 3, S, S] -> [B, (S/p)^2, C]``.

    ``model_name`` plus ``model_kwargs`` build it with timm (random init; real BiomedCLIP weights
    arrive through open_clip). ``num_prefix_tokens`` (the CLS) are dropped.
    """

    def __init__(
        self,
        model_name: str = "vit_base_patch16_224",
        model_kwargs: dict | None = None,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        pos_embed_init: str = "default",
    ):
        super().__init__(image_size, mean, std)
        import timm

        kwargs = {"img_size": image_size, "num_classes": 0, **(model_kwargs or {})}
        self.trunk = timm.create_model(model_name, pretrained=False, **kwargs)
        prefix = 0 if self.trunk.no_embed_class else self.trunk.num_prefix_tokens
        _init_position_table(self.trunk.pos_embed, prefix, pos_embed_init)
        self.width = self.trunk.embed_dim
        self.num_tokens = self.trunk.patch_embed.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(self.normalize(images))
        return tokens[:, self.trunk.num_prefix_tokens :]


class HFCLIPVision(VisionTower):
    """A transformers ``CLIPVisionModel``. ``[B, 3, S, S] -> [B, (S/p)^2, C]`` (CLS dropped).

    ``pretrained`` is a hub id or a local directory written by ``save_pretrained``; without it
    ``config`` (a ``CLIPVisionConfig`` dict) builds a randomly initialised tower.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        pos_embed_init: str = "default",
    ):
        super().__init__(image_size, mean, std)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if pretrained:
            self.model = CLIPVisionModel.from_pretrained(pretrained)
        else:
            self.model = CLIPVisionModel(CLIPVisionConfig(image_size=image_size, **(config or {})))
            _init_position_table(_clip_position_table(self.model), 1, pos_embed_init)
        cfg = self.model.config
        if cfg.image_size != image_size:
            raise ValueError(f"CLIP vision config has image_size {cfg.image_size}, encoder config says {image_size}")
        self.width = cfg.hidden_size
        self.num_tokens = (cfg.image_size // cfg.patch_size) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=self.normalize(images)).last_hidden_state[:, 1:]


def _clip_position_table(model: nn.Module) -> torch.Tensor:
    return next(p for n, p in model.named_parameters() if n.endswith("position_embedding.weight"))


class FusedTowers(nn.Module):
    """Several towers side by side, tokens concatenated in tower order (LiteGPT section 3.1).

    ``[B, 3, S, S] -> [B, sum_i P_i, C]``. The towers must share a width ``C`` and an input
    size: concatenation along tokens keeps channels aligned, and LiteGPT's BiomedCLIP and
    PubMedCLIP are both 768 wide at 224.
    """

    def __init__(self, towers: Sequence[VisionTower] | Mapping[str, VisionTower]):
        super().__init__()
        towers = list(towers.values()) if isinstance(towers, Mapping) else list(towers)
        self.towers = nn.ModuleList(towers)
        widths = {t.width for t in towers}
        sizes = {t.image_size for t in towers}
        if len(widths) != 1:
            raise ValueError(f"fused towers must have one width to concatenate tokens, got {sorted(widths)}")
        if len(sizes) != 1:
            raise ValueError(f"fused towers must share an input size, got {sorted(sizes)}")
        self.width = widths.pop()
        self.image_size = sizes.pop()
        self.tokens_per_tower = [t.num_tokens for t in towers]
        self.num_tokens = sum(self.tokens_per_tower)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([t(images) for t in self.towers], dim=1)

    def tower_names(self) -> list[str]:
        return [type(t).__name__ for t in self.towers]


class OpenCLIPTrunk(VisionTower):
    """The timm trunk of an open_clip model (BiomedCLIP). ``[B, 3, S, S] -> [B, (S/p)^2, C]``.

    ``model_name``: ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` (a folder holding
    ``open_clip_config.json`` and the weights), as open_clip resolves them.
    """

    def __init__(
        self,
        model_name: str,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
    ):
        super().__init__(image_size, mean, std)
        import open_clip

        model = open_clip.create_model(model_name)
        self.trunk = model.visual.trunk
        self.width = self.trunk.embed_dim
        self.num_tokens = self.trunk.patch_embed.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(self.normalize(images))[:, self.trunk.num_prefix_tokens :]
