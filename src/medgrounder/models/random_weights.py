"""Random weights written in the real models' published on-disk formats, at any width and depth.

For loading the real-size path without the real files (``bench/full_size.py``, the tests): each
writer produces what its loader reads from the real download, so the same code path runs.

- :func:`write_llama_dir`: a Hugging Face Llama directory (``config.json``,
  ``generation_config.json``, sharded ``model-0000i-of-0000n.safetensors`` with
  ``model.safetensors.index.json``, the tokenizer files), as ``meta-llama/Llama-2-7b-chat-hf``.
- :func:`write_open_clip_dir`: BiomedCLIP's open_clip folder (``open_clip_config.json`` and
  ``open_clip_pytorch_model.bin``).
- :func:`write_clip_dir`: PubMedCLIP's transformers folder (``CLIPVisionModel`` or, with a text
  config, ``CLIPModel``, through ``save_pretrained``).
- :func:`write_eva_vit_g`: BLIP-2's ``eva_vit_g.pth`` (a flat state dict, 224 px position table,
  plus EVA-CLIP's 40th block and final norm that the 39-block ViT drops).
- :func:`write_minigptv2`: MiniGPT-v2's checkpoint, ``{"model": {name: tensor}, "epoch": int}``
  with its own key names (``llama_proj.*`` and old-peft LoRA names without the adapter name).

:func:`write_config_weights` writes all of them for a composed training config (its towers, its
LLM, its ``init_from`` checkpoint) and returns the ordinary overrides (``model.llm.pretrained``,
``paths.eva_vit_g``, ...) that point the same config at them; :func:`depth_overrides` shortens
the LLM (and optionally the towers) first.

Weights are drawn from ``N(0, 0.02)`` (biases 0, norm weights 1) from one seed, in ``dtype``;
the large ones (the LLM, EVA ViT-g) are built on the meta device and filled tensor by tensor, so
the writer holds their weights once, in ``dtype``, not in float32 first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medgrounder.models.llm import DTYPES

#: BiomedCLIP's open_clip_config.json as on the hub (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224):
#: the text tower is a Hugging Face BERT the loader never builds (only ``visual.*`` is read).
BIOMEDCLIP_TEXT_CFG = {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                       "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                       "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                       "context_length": 256}
CLIP_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0, dtype: str | torch.dtype = "fp32", device: str = "cpu") -> nn.Module:
    """``module``'s parameters in ``dtype``, drawn at random: ``N(0, 0.02)`` for matrices and
    embeddings, 0 for biases, 1 for norm weights (1-d ``weight`` of a module named ``*norm*`` or
    ``ln*``); deterministic in ``seed`` and the parameter order. A module on the meta device is
    materialised on ``device`` first (its non-persistent buffers, e.g. rotary tables, are then
    uninitialised: write the weights, do not run it)."""
    module.to(dtype=_dtype(dtype))
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module.to_empty(device=device)
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        *owners, leaf = name.split(".")
        if p.ndim == 1 and leaf == "weight" and any("norm" in o or o.startswith("ln") for o in owners):
            p.fill_(1.0)
        elif p.ndim == 1 and (leaf == "bias" or leaf.endswith("_bias")):
            p.zero_()
        else:
            p.copy_(torch.randn(p.shape, generator=gen).mul_(0.02).to(p.dtype))
    return module


# ----------------------------------------------------------------------------- Llama (HF directory)
def write_llama_dir(folder: str | Path, config: Mapping, num_layers: int | None = None, dtype: str = "bf16",
                    tokenizer: str | None = None, max_shard_size: str = "2GB", seed: int = 0) -> Path:
    """A Llama checkpoint directory as ``save_pretrained`` writes it (sharded safetensors with
    their index when larger than ``max_shard_size``), ``config`` a ``LlamaConfig`` dict
    (``num_layers`` overrides its depth), and the tokenizer of ``tokenizer`` (a directory or hub
    id) saved beside it. Returns ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = dict(config)
    if num_layers is not None:
        cfg["num_hidden_layers"] = int(num_layers)
    llama_config = LlamaConfig(**cfg)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config)
    randomize_(model, seed, dtype)
    model.config.dtype = _dtype(dtype)
    folder = Path(folder)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    if tokenizer:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- BiomedCLIP (open_clip)
def write_open_clip_dir(folder: str | Path, model_cfg: Mapping, preprocess_cfg: Mapping | None = None,
                        dtype: str = "fp32", seed: int = 0) -> nn.Module:
    """An open_clip folder: ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``) and
    ``open_clip_pytorch_model.bin``. The file holds the ``visual.*`` tower built from
    ``model_cfg["vision_cfg"]``, and the ``text.*`` tower too when its ``text_cfg`` is open_clip's
    own (a ``hf_model_name`` text tower, BiomedCLIP's PubMedBERT, would need the hub). Returns the
    image tower written (open_clip's ``visual`` module)."""
    import open_clip
    from open_clip.model import _build_vision_tower

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": dict(model_cfg), "preprocess_cfg": dict(preprocess_cfg or CLIP_PREPROCESS)}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    text_cfg = cfg["model_cfg"].get("text_cfg") or {}
    torch.manual_seed(seed)
    if text_cfg and "hf_model_name" not in text_cfg:
        model = open_clip.create_model(f"local-dir:{folder}")
        randomize_(model, seed, dtype)
        state, visual = model.state_dict(), model.visual
    else:
        vision_cfg = {**cfg["model_cfg"]["vision_cfg"], "timm_model_pretrained": False}
        visual = _build_vision_tower(cfg["model_cfg"]["embed_dim"], vision_cfg,
                                     quick_gelu=cfg["model_cfg"].get("quick_gelu", False))
        randomize_(visual, seed, dtype)
        state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    return visual.eval()


# ----------------------------------------------------------------------------- PubMedCLIP (transformers)
def write_clip_dir(folder: str | Path, vision_config: Mapping, text_config: Mapping | None = None,
                   dtype: str = "fp32", seed: int = 0, **clip_kwargs) -> nn.Module:
    """A transformers CLIP folder (``save_pretrained``): ``CLIPVisionModel`` from
    ``vision_config`` (a ``CLIPVisionConfig`` dict), or ``CLIPModel`` when ``text_config`` is
    given (PubMedCLIP ships a whole ``CLIPModel``). Returns the model written."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    if text_config is not None:
        model = CLIPModel(CLIPConfig(text_config=dict(text_config), vision_config=dict(vision_config), **clip_kwargs))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision_config))
    randomize_(model, seed, dtype)
    model.save_pretrained(folder)
    return model.eval()


# ----------------------------------------------------------------------------- EVA ViT-g (BLIP-2)
def blip2_eva_state(vit: nn.Module, extra_blocks: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """``vit``'s state dict (an :class:`~medgrounder.models.eva_vit.EVAViT`) laid out as BLIP-2
    ships ``eva_vit_g.pth``: flat keys, plus ``extra_blocks`` blocks past its depth and the final
    ``norm`` of the full EVA-CLIP that the 39-block ViT does not use."""
    gen = torch.Generator().manual_seed(seed + 1)
    state = dict(vit.state_dict())
    block0 = vit.blocks[0].state_dict()
    for i in range(extra_blocks):
        for k, v in block0.items():
            state[f"blocks.{vit.depth + i}.{k}"] = torch.randn(v.shape, generator=gen).mul_(0.02).to(v.dtype)
    width = vit.pos_embed.shape[-1]
    dtype = vit.pos_embed.dtype
    state["norm.weight"] = torch.ones(width, dtype=dtype)
    state["norm.bias"] = torch.zeros(width, dtype=dtype)
    return state


def write_eva_vit_g(path: str | Path, width: int = 1408, depth: int = 39, num_heads: int = 16,
                    mlp_hidden: int = 6144, patch_size: int = 14, extra_blocks: int = 1,
                    dtype: str = "fp16", seed: int = 0) -> Path:
    """``eva_vit_g.pth`` at 224 px (BLIP-2's file: fp16, 1 + 16 x 16 positions) with random
    weights. Returns ``path``."""
    from medgrounder.models.eva_vit import EVAViT

    with torch.device("meta"):
        vit = EVAViT(224, patch_size, width, depth, num_heads, mlp_hidden)
    randomize_(vit, seed, dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blip2_eva_state(vit, extra_blocks, seed), path)
    return path


# ----------------------------------------------------------------------------- MiniGPT-v2 checkpoint
def minigptv2_state(llm_layers: int, llm_width: int, projector_in: int, lora_r: int = 64,
                    targets: Sequence[str] = ("q_proj", "v_proj"), dtype: str = "fp32",
                    seed: int = 0) -> dict[str, torch.Tensor]:
    """MiniGPT-v2's ``model`` entry with its key names: ``llama_proj`` ``[llm_width, projector_in]``
    and, per decoder layer and target, ``lora_A`` ``[r, llm_width]`` and ``lora_B``
    ``[llm_width, r]`` (Llama-2's q_proj / v_proj are square)."""
    gen = torch.Generator().manual_seed(seed)
    dt = _dtype(dtype)

    def rand(*shape):
        return torch.randn(shape, generator=gen).mul_(0.02).to(dt)

    state = {"llama_proj.weight": rand(llm_width, projector_in), "llama_proj.bias": rand(llm_width)}
    for i in range(llm_layers):
        for t in targets:
            base = f"llama_model.base_model.model.model.layers.{i}.self_attn.{t}"
            state[f"{base}.lora_A.weight"] = rand(lora_r, llm_width)
            state[f"{base}.lora_B.weight"] = rand(llm_width, lora_r)
    return state


def write_minigptv2(path: str | Path, state: Mapping[str, torch.Tensor], epoch: int = 0) -> Path:
    """The checkpoint file as MiniGPT-4's runner saves it: ``{"model": state, "epoch": epoch}``
    (tensors and plain values only, so ``torch.load(weights_only=True)`` reads it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": dict(state), "epoch": int(epoch)}, path)
    return path


# ----------------------------------------------------------------------------- a whole config
def _quoted(value) -> str:
    """A Hydra override value, quoted (paths hold ``/`` and ``:``)."""
    return json.dumps(str(value))


def _towers(cfg) -> list[tuple[str, object]]:
    """``(config key, tower config)`` of every tower of ``cfg.model.encoder``."""
    enc = cfg.model.encoder
    if "towers" in enc:
        return [(f"model.encoder.towers.{name}", t) for name, t in enc.towers.items()]
    return [("model.encoder", enc)]


def _kind(tower_cfg) -> str:
    return tower_cfg._target_.rsplit(".", 1)[-1]


def depth_overrides(cfg, llm_layers: int | None, tower_layers: int | None = None) -> list[str]:
    """Overrides that shorten ``cfg``'s LLM to ``llm_layers`` decoder layers (its sizing config,
    which :func:`write_config_weights` writes) and, with ``tower_layers``, its EVA / CLIP towers
    (BiomedCLIP's timm trunk keeps its 12 blocks: its depth is the timm model's name)."""
    out = [f"model.llm.config.num_hidden_layers={int(llm_layers)}"] if llm_layers else []
    for key, t in _towers(cfg) if tower_layers else []:
        if _kind(t) == "EVAViTG":
            out.append(f"{key}.depth={int(tower_layers)}")
        elif _kind(t) == "HFCLIPVision":
            out.append(f"{key}.config.num_hidden_layers={int(tower_layers)}")
    return out


def write_config_weights(cfg, folder: str | Path, tokenizer: str | None = None, llm_dtype: str = "bf16",
                         max_shard_size: str = "5GB", projector_in: int | None = None, seed: int = 0) -> list[str]:
    """Random weights for every pretrained part of ``cfg.model`` (a composed training config),
    each in its real format under ``folder``, at the config's widths and depths; returns the
    overrides that point ``cfg`` at them. ``tokenizer``: where the Llama directory's tokenizer
    comes from (default: the config's ``model.llm.pretrained``); ``max_shard_size``: the LLM's
    safetensors shards (the 7B model in bf16: 3 of 5 GB); ``projector_in``: the input width of the
    projector's last layer, for MiniGPT-v2's ``llama_proj`` (``summarize(cfg)["projector"]["shapes"][-2]``)."""
    from omegaconf import OmegaConf

    folder = Path(folder)
    overrides = []
    for i, (key, t) in enumerate(_towers(cfg)):
        kind = _kind(t)
        if kind == "OpenCLIPTrunk":
            model_cfg = {**OmegaConf.to_container(t.model_config, resolve=True), "text_cfg": BIOMEDCLIP_TEXT_CFG}
            target = folder / f"open_clip_{i}"
            write_open_clip_dir(target, model_cfg, seed=seed + i)
            overrides.append(f"{key}.model_name={_quoted(f'local-dir:{target}')}")
        elif kind == "HFCLIPVision":
            vision = {**OmegaConf.to_container(t.config, resolve=True), "image_size": int(t.image_size)}
            write_clip_dir(folder / f"clip_{i}", vision, seed=seed + i)
            overrides.append(f"{key}.pretrained={_quoted(folder / f'clip_{i}')}")
        elif kind == "EVAViTG":
            write_eva_vit_g(folder / "eva_vit_g.pth", int(t.width), int(t.depth), int(t.num_heads),
                            int(t.mlp_hidden), int(t.patch_size), seed=seed + i)
            overrides.append(f"paths.eva_vit_g={_quoted(folder / 'eva_vit_g.pth')}")
        else:
            raise ValueError(f"{key}._target_: no random-weight writer for {t._target_}")
    llm_cfg = OmegaConf.to_container(cfg.model.llm.config, resolve=True)
    write_llama_dir(folder / "llama", llm_cfg, dtype=llm_dtype, tokenizer=tokenizer or cfg.model.llm.pretrained,
                    max_shard_size=max_shard_size, seed=seed + 10)
    overrides.append(f"model.llm.pretrained={_quoted(folder / 'llama')}")
    if cfg.model.get("init_from") and cfg.model.init_from.get("minigptv2"):
        if projector_in is None:
            raise ValueError("model.init_from.minigptv2 is set: write_config_weights needs projector_in "
                             "(the projector's last layer input, medgrounder.summary's projector shapes[-2])")
        lora = cfg.model.lora
        state = minigptv2_state(llm_cfg["num_hidden_layers"], llm_cfg["hidden_size"], projector_in, int(lora.r),
                                list(lora.targets), seed=seed + 20)
        write_minigptv2(folder / "minigptv2_checkpoint.pth", state)
        overrides.append(f"paths.minigptv2_ckpt={_quoted(folder / 'minigptv2_checkpoint.pth')}")
    return overrides
