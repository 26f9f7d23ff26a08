"""``python -m medgrounder.summary [+experiment=NAME] [overrides]``: the model an experiment
builds, sized on the meta device without reading or downloading any weights.

Prints JSON: each tower's total and trainable parameters, tokens and width; visual tokens per
image after the merge; the projector's layer shapes and parameters; the LLM's total and
trainable parameters with the LoRA settings. Real presets carry their architecture in the config
(``config:`` for transformers models, ``model_config:`` for open_clip, the EVA ViT-g shape), so
full-size numbers need no files; tiny presets build as they do for training.
"""

from __future__ import annotations

import json
import sys

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medgrounder.models.fusion import merged_token_count, resolve_merge
from medgrounder.models.llm import LoraSettings, apply_train_mode, llm_config
from medgrounder.models.projector import build_projector


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` with command-line overrides, as ``python -m medgrounder.train`` composes it."""
    with initialize_config_module("medgrounder.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _without_weights(encoder_cfg: dict) -> dict:
    """Every tower config with ``load_weights: false``."""
    cfg = dict(encoder_cfg)
    if "towers" in cfg:
        cfg["towers"] = {name: {**tower, "load_weights": False} for name, tower in cfg["towers"].items()}
    else:
        cfg["load_weights"] = False
    return cfg


def _blocks(tower: nn.Module) -> int | None:
    """Transformer blocks of a tower (EVA / timm ``blocks``, transformers ``num_hidden_layers``)."""
    for attr in ("vit", "trunk"):
        blocks = getattr(getattr(tower, attr, None), "blocks", None)
        if blocks is not None:
            return len(blocks)
    config = getattr(getattr(tower, "model", None), "config", None)
    return getattr(config, "num_hidden_layers", None)


def summarize(cfg: DictConfig) -> dict:
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    encoder_cfg = _without_weights(model_cfg["encoder"])
    encoder_trains = model_cfg.get("encoder_train_mode", "frozen") == "full"
    with torch.device("meta"):
        encoder = instantiate(encoder_cfg)
    encoder.requires_grad_(encoder_trains)
    tower_modules = list(encoder.towers)
    tower_names = list(encoder_cfg["towers"]) if "towers" in encoder_cfg else [encoder_cfg["_target_"].rsplit(".", 1)[-1]]
    towers = []
    for name, tower in zip(tower_names, tower_modules, strict=True):
        total, trainable = _count(tower)
        towers.append({"name": name, "class": type(tower).__name__, "image_size": tower.image_size,
                       "tokens": tower.num_tokens, "width": tower.width, "blocks": _blocks(tower),
                       "total_params": total, "trainable_params": trainable})
    mode = model_cfg.get("merge_mode", "flat")
    tokens_per_tower = [t.num_tokens for t in tower_modules]
    k = resolve_merge(model_cfg["merge"], tokens_per_tower, model_cfg.get("visual_tokens"))
    visual_tokens = merged_token_count(tokens_per_tower, k, mode)

    llm_cfg = dict(model_cfg["llm"])
    vocab_size = None
    if not llm_cfg.get("pretrained"):
        from medgrounder.models.tokenizer import load_tokenizer

        vocab_size = len(load_tokenizer(**(llm_cfg.get("tokenizer") or {})))
    arch = llm_config(llm_cfg.get("pretrained"), llm_cfg.get("config"), vocab_size)
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        llm = LlamaForCausalLM(arch)
    base_total, _ = _count(llm)
    lora = LoraSettings(**(model_cfg.get("lora") or {}))
    llm = apply_train_mode(llm, llm_cfg.get("train_mode", "lora"), lora)
    total_with_adapters, llm_trainable = _count(llm)
    lora_params = sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)

    hidden = (model_cfg.get("projector") or {}).get("hidden")
    with torch.device("meta"):
        projector = build_projector(encoder.width * k, arch.hidden_size, hidden)
    proj_total, _ = _count(projector)
    layers = [[m.in_features, m.out_features] for m in projector if isinstance(m, nn.Linear)]

    uses_lora = llm_cfg.get("train_mode", "lora") in ("lora", "lora_embed")
    summary = {
        "task_name": cfg.get("task_name"),
        "image_size": model_cfg["image_size"],
        "towers": towers,
        "encoder": {"class": type(encoder).__name__, "tokens_per_tower": tokens_per_tower, "width": encoder.width,
                    "train_mode": model_cfg.get("encoder_train_mode", "frozen")},
        "merge": {"k": k, "mode": mode, "token_width": encoder.width * k},
        "visual_tokens": visual_tokens,
        "projector": {"shapes": [layers[0][0], *[out for _, out in layers]], "layers": layers,
                      "params": proj_total},
        "llm": {
            "pretrained": llm_cfg.get("pretrained"),
            "layers": arch.num_hidden_layers, "hidden_size": arch.hidden_size, "vocab_size": arch.vocab_size,
            "dtype": llm_cfg.get("dtype"), "quantization": llm_cfg.get("quantization"),
            "train_mode": llm_cfg.get("train_mode", "lora"),
            "total_params": base_total, "trainable_params": llm_trainable,
            "lora": ({"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.targets),
                      "params": lora_params} if uses_lora else None),
        },
        "init_from": model_cfg.get("init_from"),
    }
    towers_total = sum(t["total_params"] for t in towers)
    summary["total_params"] = towers_total + proj_total + total_with_adapters
    summary["trainable_params"] = sum(t["trainable_params"] for t in towers) + proj_total + llm_trainable
    return summary


def main(argv: list[str] | None = None) -> dict:
    summary = summarize(compose_config(list(sys.argv[1:] if argv is None else argv)))
    print(json.dumps(summary, indent=2))
    return summary



def cli() -> None:
    """The console script (``medgrounder-summary``): :func:`main`, exit status 0 (the console-script
    wrapper would turn the returned summary into status 1)."""
    main()


if __name__ == "__main__":
    cli()
