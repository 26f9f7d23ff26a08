"""Start-up checks: a run without its data or weights stops before any work, saying what is
missing, where it was looked for and where to get it. Each datamodule (and caption source)
declares its own inputs (``missing_inputs``); the weights are checked here."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

# Weight files (not hub repositories): config key suffix -> where to get them.
WEIGHT_FILES = {
    "checkpoint": "BLIP-2's EVA ViT-g: https://storage.googleapis.com/sfr-vision-language-research/"
    "LAVIS/models/BLIP2/eva_vit_g.pth",
    "minigptv2": "MiniGPT-v2's stage-3 checkpoint (minigptv2_checkpoint.pth) linked from "
    "https://github.com/Vision-CAIR/MiniGPT-4",
}


class MissingInputError(RuntimeError):
    """Raised before training when data or weights are absent."""


def _hub_cached(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename), str)


def _check_weights(key: str, ref: str, marker: str) -> str | None:
    """``ref`` is a hub id, ``hf-hub:ID``, ``local-dir:PATH`` or a directory."""
    if ref.startswith("local-dir:"):
        ref = ref.removeprefix("local-dir:")
    elif ref.startswith("hf-hub:"):
        ref = ref.removeprefix("hf-hub:")
    if ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists():
        path = Path(ref).expanduser()
        return None if path.exists() else f"{key}: local weights directory {path} does not exist"
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if offline and not _hub_cached(ref, marker):
        return (
            f"{key}: '{ref}' is not in the Hugging Face cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
            f"and HF_HUB_OFFLINE is set. Download it with `hf download {ref}` "
            f"(https://huggingface.co/{ref}) or point {key} at a local directory."
        )
    return None


def _weight_refs(model: DictConfig):
    encoder = model.encoder
    towers = list(encoder.towers.values()) if "towers" in encoder else [encoder]
    for i, tower in enumerate(towers):
        prefix = f"model.encoder.towers[{i}]" if "towers" in encoder else "model.encoder"
        if tower.get("checkpoint"):
            yield f"{prefix}.checkpoint", tower.checkpoint, "file:checkpoint"
        if tower.get("pretrained"):
            yield f"{prefix}.pretrained", tower.pretrained, "config.json"
        name = tower.get("model_name", "")
        if isinstance(name, str) and name.startswith(("hf-hub:", "local-dir:")):
            yield f"{prefix}.model_name", name, "open_clip_config.json"
    if model.llm.get("pretrained"):
        yield "model.llm.pretrained", model.llm.pretrained, "config.json"
    if (model.get("init_from") or {}).get("minigptv2"):
        yield "model.init_from.minigptv2", model.init_from.minigptv2, "file:minigptv2"


def _check_file(key: str, ref: str, kind: str) -> str | None:
    path = Path(ref).expanduser()
    if path.is_file():
        return None
    return f"{key}: weights file {path.resolve()} does not exist. Get {WEIGHT_FILES[kind]}."


def _check_data(data: DictConfig) -> list[str]:
    """What the configured datamodule says it lacks (built without loading anything)."""
    from hydra.utils import instantiate

    return instantiate(data).missing_inputs()


def check_inputs(cfg: DictConfig) -> None:
    problems = _check_data(cfg.data)
    weights = list(_weight_refs(cfg.model))
    loaded_towers = [key for key, _, _ in weights if key.startswith("model.encoder")]
    if cfg.get("tower_pretraining") and loaded_towers:
        raise ValueError(f"tower_pretraining is for randomly initialised tiny towers, but {', '.join(loaded_towers)} "
                         "load pretrained weights: set tower_pretraining=null")
    for key, ref, marker in weights:
        if marker.startswith("file:"):
            msg = _check_file(key, str(ref), marker.removeprefix("file:"))
        else:
            msg = _check_weights(key, str(ref), marker)
        if msg:
            problems.append(msg)
    if problems:
        raise MissingInputError("Missing inputs:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------------ generation budgets
#: the share of training answers a generation budget must cover whole
BUDGET_PERCENTILE = 99.5


class BudgetError(ValueError):
    """A stage's generation budget is below the length of its training answers."""


def stage_budget(cfg: DictConfig, stage: str) -> tuple[int, str]:
    """``(max new tokens, the key that sets it)`` of a stage's evaluation:
    ``stages.<stage>.max_new_tokens``, else ``model.max_new_tokens``."""
    own = cfg.stages[stage].get("max_new_tokens")
    if own is not None:
        return int(own), f"stages.{stage}.max_new_tokens"
    return int(cfg.model.max_new_tokens), f"model.max_new_tokens (stages.{stage}.max_new_tokens is unset)"


def answer_lengths(tokenizer, answers: list[str]) -> list[int]:
    """Tokens of each answer in ``tokenizer`` (no special tokens: what the model writes before ``</s>``)."""
    if not answers:
        return []
    return [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]]


def check_budget(key: str, budget: int, task: str, lengths: list[int]) -> dict:
    """Refuse a budget below the :data:`BUDGET_PERCENTILE` percentile of the training answers'
    token lengths (:class:`BudgetError` naming ``key`` and the numbers); returns the numbers."""
    import numpy as np

    if not lengths:
        return {"n": 0}
    stats = {"budget": budget, "p99.5": float(np.percentile(lengths, BUDGET_PERCENTILE)), "max": max(lengths),
             "n": len(lengths)}
    if budget < stats["p99.5"]:
        raise BudgetError(
            f"{key}={budget} is below the {BUDGET_PERCENTILE:g}th percentile of the [{task}] training answers in the "
            f"configured tokenizer: budget {budget}, p99.5 {stats['p99.5']:.1f}, max {stats['max']}, "
            f"{stats['n']} answers; answers longer than the budget are cut and their last boxes lost. Set {key.split()[0]} "
            f"to at least {int(np.ceil(stats['p99.5']))} (or check_generation_budgets=false for a smoke run)")
    return stats


def check_generation_budgets(cfg: DictConfig, tokenizer, datamodule, stages) -> dict[str, dict]:
    """For every stage of ``stages`` (``(index, name, stage config)``) whose task is evaluated,
    :func:`check_budget` of its budget (:func:`stage_budget`) against the answers of the task's
    training targets (``Task.budget_answers``) in ``tokenizer``; returns the numbers by stage."""
    from medgrounder.tasks import get_task

    out = {}
    for _, name, scfg in stages:
        if not (cfg.get("evaluate", True) and scfg.get("evaluate", True)):
            continue
        task = get_task(scfg.task)
        answers = task.budget_answers(datamodule.for_task(scfg.task).targets("train"))
        budget, key = stage_budget(cfg, name)
        out[name] = check_budget(key, budget, task.name, answer_lengths(tokenizer, answers))
    return out
