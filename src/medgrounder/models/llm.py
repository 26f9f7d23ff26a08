"""The language model: Llama-2-chat from a hub id / local directory, or a tiny random Llama.

Trainability is config (torchtune style): ``frozen``, ``lora`` (peft LoRA on ``lora.targets``),
``lora_embed`` (LoRA plus trainable embeddings and LM head) or ``full``. The papers LoRA a
pretrained 7B model (LoRA r=64, alpha=16, dropout 0.05 on q_proj/v_proj); a randomly initialised
tiny LLM cannot learn through LoRA alone, so tiny presets use ``full``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

TRAIN_MODES = ("frozen", "lora", "lora_embed", "full")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoraSettings:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


def build_llm(
    pretrained: str | None = None,
    config: dict | None = None,
    vocab_size: int | None = None,
    dtype: str = "fp32",
    quantization: str | None = None,
    train_mode: str = "lora",
    lora: dict | None = None,
    gradient_checkpointing: bool = False,
    device_map: dict | str | None = None,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """Build the LLM and apply its trainability.

    ``pretrained``: hub id or directory (``from_pretrained``, which reads the checkpoint's own
    ``config.json``; a ``config`` given alongside only sizes the model without weights, see
    :func:`llm_config`); otherwise ``config`` is a ``LlamaConfig`` dict (``vocab_size`` filled
    from the tokenizer). ``quantization``: ``8bit``
    or ``4bit`` through bitsandbytes (``BitsAndBytesConfig``), then peft's
    ``prepare_model_for_kbit_training``. ``gradient_checkpointing``: recompute each decoder
    layer in the backward pass (non-reentrant, so LoRA weights get their gradients whether or not
    the layer's input requires one). ``attn_implementation``: transformers' attention kernel,
    ``sdpa`` (``F.scaled_dot_product_attention``), ``eager`` or ``flash_attention_2``.
    """
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"llm.train_mode must be one of {TRAIN_MODES}, got {train_mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"llm.dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if attn_implementation not in ATTENTION:
        raise ValueError(f"model.llm.attn_implementation must be one of {ATTENTION}, got {attn_implementation!r}")
    if not isinstance(gradient_checkpointing, bool):
        raise ValueError(f"model.llm.gradient_checkpointing must be true or false, got {gradient_checkpointing!r}")
    if pretrained:
        kwargs: dict = {"dtype": DTYPES[dtype], "attn_implementation": attn_implementation}
        if quantization:
            from transformers import BitsAndBytesConfig

            if quantization not in ("8bit", "4bit"):
                raise ValueError(f"llm.quantization must be 8bit, 4bit or null, got {quantization!r}")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=quantization == "8bit",
                load_in_4bit=quantization == "4bit",
                bnb_4bit_compute_dtype=DTYPES[dtype] if dtype != "fp32" else torch.float32,
            )
            kwargs["device_map"] = device_map or {"": _local_device()}
        model = AutoModelForCausalLM.from_pretrained(pretrained, **kwargs)
    else:
        cfg = dict(config or {})
        if vocab_size is not None:
            cfg["vocab_size"] = vocab_size
        model = LlamaForCausalLM(LlamaConfig(**cfg, attn_implementation=attn_implementation)).to(DTYPES[dtype])
    checkpointing = {"use_reentrant": False}
    if quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs=checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    return apply_train_mode(model, train_mode, LoraSettings(**(lora or {})))


def llm_config(pretrained: str | None = None, config: dict | None = None, vocab_size: int | None = None) -> LlamaConfig:
    """The LLM's architecture without its weights: the ``config`` dict when given, else the
    ``config.json`` of ``pretrained`` (a local directory or the hub cache)."""
    if config:
        cfg = dict(config)
        if vocab_size is not None and not pretrained:
            cfg["vocab_size"] = vocab_size
        return LlamaConfig(**cfg)
    if pretrained:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(pretrained)
    raise ValueError("model.llm needs `pretrained` or `config`")


def apply_train_mode(model: nn.Module, train_mode: str, lora: LoraSettings) -> nn.Module:
    if train_mode == "full":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    if train_mode == "frozen":
        return model
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.targets),
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=["embed_tokens", "lm_head"] if train_mode == "lora_embed" else None,
    )
    return get_peft_model(model, peft_cfg)


def local_rank() -> int:
    """This process's GPU index on its node: ``LOCAL_RANK`` (Lightning's launcher, torchrun), else
    ``SLURM_LOCALID`` (srun, hydra/launcher=submitit_slurm), else 0."""
    import os

    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def _local_device() -> str | int:
    """Each DDP rank keeps its quantized copy on its own GPU (the references put all on GPU 0)."""
    return local_rank() if torch.cuda.is_available() else "cpu"
