"""Stage checkpoints back into a model: the trainable weights, strictly
(:func:`~medgrounder.models.checkpoints.check_trainable_state`), and the whole model rebuilt from
a checkpoint's resolved config (``evaluate``, ``predict``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medgrounder.models.checkpoints import check_trainable_state
from medgrounder.models.tower_pretraining import pretrain_configured_towers

__all__ = ["load_checkpoint_module", "load_stage_checkpoint"]


def load_stage_checkpoint(module, ckpt: dict, path: str | Path) -> None:
    """Load a stage checkpoint's trainable weights (``ckpt`` as read from ``path``); every saved
    key must match a parameter that training changes in this model, every such parameter must be
    present, and the frozen weights must be the ones it was trained with."""
    check_trainable_state(module, ckpt["state_dict"], ckpt.get("frozen_fingerprint"), f"checkpoint {path}")
    module.load_state_dict(ckpt["state_dict"], strict=False)


def load_checkpoint_module(ckpt_path: str | Path):
    """Rebuild the model from a stage checkpoint's config and load its weights strictly.

    Returns ``(module, run config, stage name, data)``; ``data()`` gives the run's datamodule, set
    up, built on first call (only evaluation, or pretraining tiny towers not cached yet, needs it).
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    run_cfg = OmegaConf.create(ckpt["config"])
    L.seed_everything(run_cfg.seed, workers=True)  # random tiny towers are rebuilt as in training
    module = instantiate(run_cfg.model)
    built: list = []

    def data():
        if not built:
            built.append(instantiate(run_cfg.data, tokenizer=module.tokenizer))
            built[0].setup("test")
        return built[0]

    pretrain_configured_towers(run_cfg, module, data)
    load_stage_checkpoint(module, ckpt, ckpt_path)
    return module, run_cfg, ckpt["stage"], data
