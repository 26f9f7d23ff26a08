"""Vision towers: an image batch in, patch tokens out (CLS and other prefix tokens dropped).

Every tower takes ``[B, 3, H, W]`` floats in [0, 1] at its own ``image_size`` and applies its
own normalisation, so preprocessing travels with the encoder config (as in timm / open_clip)
and a fused pair of towers with different statistics still sees what each was trained on.

- :class:`TimmViT`: a timm VisionTransformer, the trunk of BiomedCLIP's open_clip model
  (``visual.trunk.forward_features(x)[:, 1:]``: 196 x 768 at 224 for ViT-B/16).
- :class:`HFCLIPVision`: a transformers ``CLIPVisionModel`` as PubMedCLIP ships it
  (``last_hidden_state[:, 1:]``: 49 x 768 at 224 for ViT-B/32).
- :class:`OpenCLIPTrunk`: BiomedCLIP through open_clip (``hf-hub:`` or ``local-dir:``), the
  timm trunk's patch tokens.
- :class:`EVAViTG`: BLIP-2's EVA ViT-g (MiniGPT-v2 / PFMVG) from a local ``eva_vit_g.pth``:
  1024 x 1408 at 448.
- :class:`FusedTowers`: LiteGPT's pair, tokens concatenated: ``[B, P1, C] + [B, P2, C] -> [B, P1+P2, C]``.

Tiny presets build the same classes from a small config with random weights; real presets load
from a hub id or a local directory through the same code. Every tower takes ``load_weights``:
``False`` builds the architecture from the config alone (no file or network access), which is how
``python -m medgrounder.summary`` sizes real models on the meta device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
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

    @property
    def towers(self) -> list[VisionTower]:
        """The towers of this encoder: itself (:class:`FusedTowers` holds several)."""
        return [self]


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
        load_weights: bool = True,
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

    ``pretrained`` is a hub id or a local directory written by ``save_pretrained`` (a
    ``CLIPModel`` or ``CLIPVisionModel`` checkpoint: the vision tower is kept). Without it, or with
    ``load_weights=False``, ``config`` (a ``CLIPVisionConfig`` dict) builds a randomly initialised
    tower; real presets state their architecture there so it can be sized without the files.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        pos_embed_init: str = "default",
        load_weights: bool = True,
    ):
        super().__init__(image_size, mean, std)
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if pretrained and load_weights:
            self.model = CLIPVisionModel.from_pretrained(pretrained)
        elif pretrained and config is None:
            raise ValueError(f"HFCLIPVision({pretrained!r}) without weights needs its `config` (a CLIPVisionConfig dict)")
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


WIDTH_RULES = ("error", "pad")


class FusedTowers(nn.Module):
    """Several towers side by side, tokens concatenated in tower order (LiteGPT section 3.1).

    ``[B, 3, S, S] -> [B, sum_i P_i, C]``. The towers share an input size. Concatenation along
    tokens needs one width ``C``; LiteGPT's BiomedCLIP and PubMedCLIP are both 768 wide at 224.
    When widths differ, ``width_rule`` decides:

    - ``error`` (default): refuse, naming the widths and the setting below.
    - ``pad``: zero-pad each narrower tower's channels to the widest, ``[B, P_i, C_i] ->
      [B, P_i, C_max]``. It adds no weights and loses nothing: after the merge the trainable
      projector reads every channel, so it learns its own map per tower, while a per-tower Linear
      inside the frozen encoder would stay at its random init.
    """

    def __init__(self, towers: Sequence[VisionTower] | Mapping[str, VisionTower], width_rule: str = "error"):
        super().__init__()
        if width_rule not in WIDTH_RULES:
            raise ValueError(f"model.encoder.width_rule must be one of {WIDTH_RULES}, got {width_rule!r}")
        towers = list(towers.values()) if isinstance(towers, Mapping) else list(towers)
        self.towers = nn.ModuleList(towers)
        widths = [t.width for t in towers]
        sizes = {t.image_size for t in towers}
        if len(set(widths)) != 1 and width_rule == "error":
            raise ValueError(
                f"fused towers must have one width to concatenate tokens, got {widths} "
                f"({', '.join(type(t).__name__ for t in towers)}); set model.encoder.width_rule=pad "
                "to zero-pad the narrower towers' channels to the widest"
            )
        if len(sizes) != 1:
            raise ValueError(f"fused towers must share an input size, got {sorted(sizes)}")
        self.width_rule = width_rule
        self.tower_widths = widths
        self.width = max(widths)
        self.image_size = sizes.pop()
        self.tokens_per_tower = [t.num_tokens for t in towers]
        self.num_tokens = sum(self.tokens_per_tower)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        parts = [t(images) for t in self.towers]
        parts = [F.pad(p, (0, self.width - p.shape[-1])) if p.shape[-1] < self.width else p for p in parts]
        return torch.cat(parts, dim=1)

    def tower_names(self) -> list[str]:
        return [type(t).__name__ for t in self.towers]


class OpenCLIPTrunk(VisionTower):
    """The timm trunk of an open_clip model (BiomedCLIP). ``[B, 3, S, S] -> [B, (S/p)^2, C]``.

    ``model_name``: ``hf-hub:ORG/NAME`` or ``local-dir:PATH`` (a folder holding
    ``open_clip_config.json`` and the weights), as open_clip resolves them.

    Only the image tower is built: open_clip's ``_build_vision_tower`` from the config's
    ``vision_cfg``, loaded strictly from the checkpoint's ``visual.*`` entries. Building the whole
    CLIP model would also build BiomedCLIP's PubMedBERT text tower, whose config open_clip fetches
    from a second hub repository: an offline cluster with only the BiomedCLIP folder would fail.
    ``model_config`` (the ``model_cfg`` of ``open_clip_config.json``) builds the tower without
    reading anything (``load_weights=False``).
    """

    def __init__(
        self,
        model_name: str,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        model_config: dict | None = None,
        load_weights: bool = True,
    ):
        super().__init__(image_size, mean, std)
        from open_clip.model import _build_vision_tower

        cfg = model_config
        if load_weights or cfg is None:
            cfg = _open_clip_config(model_name)
        vision_cfg = dict(cfg["vision_cfg"])
        vision_cfg["timm_model_pretrained"] = False
        if vision_cfg.get("image_size", image_size) != image_size:
            raise ValueError(f"{model_name} is configured for {vision_cfg['image_size']} px, encoder config says {image_size}")
        visual = _build_vision_tower(cfg["embed_dim"], vision_cfg, quick_gelu=cfg.get("quick_gelu", False))
        if load_weights:
            _load_visual(visual, model_name)
        self.trunk = visual.trunk
        self.width = self.trunk.embed_dim
        self.num_tokens = self.trunk.patch_embed.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(self.normalize(images))[:, self.trunk.num_prefix_tokens :]


def _open_clip_config(model_name: str) -> dict:
    from open_clip.factory import get_model_config

    if not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"open_clip model_name must start with hf-hub: or local-dir:, got {model_name!r}")
    cfg = get_model_config(model_name)
    if cfg is None or "vision_cfg" not in cfg:
        raise ValueError(f"{model_name}: open_clip_config.json has no model_cfg.vision_cfg")
    return cfg


def _load_visual(visual: nn.Module, model_name: str) -> None:
    """The ``visual.*`` entries of the open_clip checkpoint, strictly (keys listed on mismatch)."""
    from pathlib import Path

    from open_clip.factory import (
        _find_checkpoint_in_dir,
        download_pretrained_from_hf,
        load_state_dict,
    )

    if model_name.startswith("local-dir:"):
        folder = Path(model_name.removeprefix("local-dir:")).expanduser()
        path = _find_checkpoint_in_dir(folder)
        if path is None:
            raise FileNotFoundError(f"{model_name}: no .safetensors / .bin / .pth weights in {folder}")
    else:
        path = download_pretrained_from_hf(model_name.removeprefix("hf-hub:"))
    state = {k.removeprefix("visual."): v for k, v in load_state_dict(path).items() if k.startswith("visual.")}
    if not state:
        raise KeyError(f"{path} has no visual.* weights")
    result = visual.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise KeyError(f"{path}: visual tower keys differ: missing {result.missing_keys or 'none'}; "
                       f"unexpected {result.unexpected_keys or 'none'}")


class EVAViTG(VisionTower):
    """BLIP-2's EVA ViT-g (MiniGPT-v2, PFMVG). ``[B, 3, S, S] -> [B, (S/14)^2, 1408]``.

    ``checkpoint``: a local ``eva_vit_g.pth`` (see :mod:`medgrounder.models.eva_vit` for its
    layout); position embeddings are interpolated to ``image_size`` (448 -> 32 x 32 = 1024
    tokens). The CLS token is dropped. ``ln_vision``: MiniGPT-v2's LayerNorm after the ViT
    (``ln_vision(visual_encoder(x))``, eps 1e-5); MiniGPT-v2 freezes it at its init (weight 1,
    bias 0), so it carries no checkpoint weights. ``checkpoint: null`` builds a random tower
    (tiny presets).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        image_size: int = 448,
        patch_size: int = 14,
        width: int = 1408,
        depth: int = 39,
        num_heads: int = 16,
        mlp_hidden: int = 6144,
        ln_vision: bool = True,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        pos_embed_init: str = "default",
        gradient_checkpointing: bool = False,
        load_weights: bool = True,
    ):
        super().__init__(image_size, mean, std)
        from medgrounder.models.eva_vit import EVAViT, load_eva_checkpoint

        self.vit = EVAViT(image_size, patch_size, width, depth, num_heads, mlp_hidden, gradient_checkpointing)
        if checkpoint and load_weights:
            load_eva_checkpoint(self.vit, checkpoint)
        elif pos_embed_init != "default":
            _init_position_table(self.vit.pos_embed, 1, pos_embed_init)
        self.ln_vision = nn.LayerNorm(width) if ln_vision else nn.Identity()
        self.width = width
        self.num_tokens = self.vit.num_patches

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.ln_vision(self.vit(self.normalize(images)))[:, 1:]
