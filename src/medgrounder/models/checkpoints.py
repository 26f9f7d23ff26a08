"""Starting from MiniGPT-v2's released weights, with every key accounted for.

MiniGPT-v2's checkpoint (``minigptv2_checkpoint.pth``, ``{"model": state_dict, ...}``) holds the
weights its training changed: the vision-to-LLM projection and the LLM's LoRA adapters, saved by
an older peft without the adapter name::

    llama_proj.weight                                                      [4096, 5632]
    llama_proj.bias                                                        [4096]
    llama_model.base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight   [64, 4096]
    llama_model.base_model.model.model.layers.{i}.self_attn.q_proj.lora_B.weight   [4096, 64]
    ... (v_proj likewise, i = 0..31)

Our modules name them::

    projector.{last}.weight / .bias          (the last Linear: PFMVG's only one, LiteGPT's second)
    llm.base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default.weight  ...

:func:`minigptv2_key_map` spells the map out from our model's own keys; :func:`load_minigptv2`
loads the chosen parts (``projector``, ``lora``) and raises, listing the keys, when an expected
key is missing, a key is unexpected, or a shape differs. Nothing is skipped silently.

Our own checkpoints (a stage's ``checkpoints/<stage>.pt``, Lightning's resume checkpoint) keep
only the trainable weights and a digest of the frozen ones; :func:`check_trainable_state` is the
one check both go through. Every checkpoint is read by :func:`read_checkpoint`: tensors and plain
containers only (``weights_only=True``), so a file from elsewhere cannot run code when loaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

PARTS = ("projector", "lora")
SOURCE = "https://github.com/Vision-CAIR/MiniGPT-4 (MiniGPT-v2 stage-3 checkpoint, minigptv2_checkpoint.pth)"


class CheckpointKeyError(KeyError):
    """A checkpoint's keys do not match the model's: the message lists them."""

    def __str__(self) -> str:  # KeyError quotes its message; keep the lines readable
        return str(self.args[0])


class UnsafeCheckpointError(ValueError):
    """A checkpoint holding objects other than tensors and plain containers: refused unread."""


def read_checkpoint(path: str | Path, mmap: bool = False):
    """``torch.load`` of tensors and plain containers only (``weights_only=True``): unpickling
    anything else (a class instance, a function call) could run code, so such a file is refused
    with :class:`UnsafeCheckpointError`, naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise UnsafeCheckpointError(
            f"checkpoint {path} refused: it holds objects other than tensors and plain containers, and loading "
            f"them could run code ({detail.strip()}). medgrounder's checkpoints hold tensors and plain types only; "
            "a checkpoint written by an older version that stored objects must be re-created by training") from None


def check_trainable_state(module: nn.Module, saved: Iterable[str], fingerprint: str | None, origin: str) -> None:
    """Refuse a checkpoint of ``module`` (a :class:`VisionLanguageModel`) unless its keys
    ``saved`` are exactly the parameters training changes, and its frozen weights' digest
    ``fingerprint`` (None: not recorded) is this model's; ``origin`` names it in the errors."""
    expected, saved = module.trainable_names(), set(saved)
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise CheckpointKeyError(f"{origin} does not match the model's trainable weights: missing {missing[:20]}"
                                 f"{' ...' if len(missing) > 20 else ''}, unexpected {unexpected[:20]}")
    if fingerprint not in (None, module.frozen_fingerprint()):
        raise ValueError(f"{origin}: the frozen weights of this model differ from those it was trained with "
                         "(other pretrained files, or another seed for random towers)")


def last_linear_name(projector: nn.Sequential, prefix: str = "projector") -> str:
    """``projector.{i}`` of the projector's last ``Linear`` (where ``llama_proj`` goes)."""
    idx = [i for i, m in enumerate(projector) if isinstance(m, nn.Linear)]
    if not idx:
        raise ValueError("the projector has no Linear layer")
    return f"{prefix}.{idx[-1]}"


def minigptv2_key_map(model_keys: Iterable[str], projector_last: str, parts: Sequence[str] = PARTS) -> dict[str, str]:
    """MiniGPT-v2 key -> our key, for every key the chosen ``parts`` expect.

    ``model_keys``: our module's state-dict keys; LoRA keys are those of peft's ``default``
    adapter on the LLM (``llm.<path>.lora_{A,B}.default.weight``)."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"MiniGPT-v2 parts must be among {PARTS}, got {sorted(unknown)}")
    mapping: dict[str, str] = {}
    if "projector" in parts:
        mapping["llama_proj.weight"] = f"{projector_last}.weight"
        mapping["llama_proj.bias"] = f"{projector_last}.bias"
    if "lora" in parts:
        for key in model_keys:
            if key.startswith("llm.") and ".lora_" in key and ".default." in key:
                mapping["llama_model." + key.removeprefix("llm.").replace(".default.", ".")] = key
    return mapping


def _all_parts_map(module: nn.Module) -> dict[str, str]:
    return minigptv2_key_map(module.state_dict().keys(), last_linear_name(module.projector), PARTS)


def read_minigptv2(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"MiniGPT-v2 checkpoint {path} not found. Get it from {SOURCE}.")
    state = read_checkpoint(path)
    return state["model"] if isinstance(state, Mapping) and "model" in state else state


def load_minigptv2(module: nn.Module, path: str | Path, parts: Sequence[str] = PARTS) -> dict[str, list[str]]:
    """Copy MiniGPT-v2's ``parts`` into ``module`` (a :class:`VisionLanguageModel`: needs
    ``.projector`` and ``.llm``). Returns ``{"loaded": [our keys], "skipped": [their keys of
    parts not chosen]}``; raises :class:`CheckpointKeyError` or ``ValueError`` on any mismatch."""
    source = read_minigptv2(path)
    return load_minigptv2_state(module, source, parts, origin=str(path))


def load_minigptv2_state(module: nn.Module, source: Mapping[str, torch.Tensor], parts: Sequence[str] = PARTS,
                         origin: str = "MiniGPT-v2 state") -> dict[str, list[str]]:
    own = module.state_dict()
    wanted = minigptv2_key_map(own.keys(), last_linear_name(module.projector), parts)
    if "lora" in parts and not any(k.startswith("llama_model.") for k in wanted):
        raise ValueError("loading MiniGPT-v2's LoRA weights needs an LLM with LoRA (model.llm.train_mode: lora)")
    known = _all_parts_map(module)
    missing = sorted(k for k in wanted if k not in source)
    unexpected = sorted(k for k in source if k not in known)
    if missing or unexpected:
        lines = [f"{origin} does not match the model (parts {list(parts)}):"]
        if missing:
            lines.append(f"  missing {len(missing)} expected key(s): " + ", ".join(f"{k} (-> {wanted[k]})" for k in missing))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
        raise CheckpointKeyError("\n".join(lines))
    wrong = [f"{src} {tuple(source[src].shape)} -> {dst} {tuple(own[dst].shape)}"
             for src, dst in wanted.items() if source[src].shape != own[dst].shape]
    if wrong:
        raise ValueError(f"{origin}: shapes differ (check the LoRA rank and projector widths): " + "; ".join(wrong))
    params = dict(module.named_parameters())
    with torch.no_grad():
        for src, dst in wanted.items():
            params[dst].copy_(source[src].to(params[dst].dtype))
    return {"loaded": sorted(wanted.values()), "skipped": sorted(set(source) - set(wanted))}


def to_minigptv2_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The inverse map: our projector's last layer and LoRA weights under MiniGPT-v2's names."""
    own = module.state_dict()
    return {src: own[dst].detach().clone() for src, dst in _all_parts_map(module).items()}
