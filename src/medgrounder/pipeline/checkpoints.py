"""Stage checkpoints back into a model: the trainable weights, strictly
(:func:`~medgrounder.models.checkpoints.check_trainable_state`), and the whole model rebuilt from
a checkpoint's resolved config (``evaluate``, ``predict``). A checkpoint is read as tensors and
plain containers only, and its config may instantiate only allowed targets
(:mod:`medgrounder.utils.targets`): a file from elsewhere cannot run code."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medgrounder.models.checkpoints import check_trainable_state, read_checkpoint
from medgrounder.models.tower_pretraining import pretrain_configured_towers
from medgrounder.utils.targets import check_targets

__all__ = ["TOWERS_KEY", "load_checkpoint_module", "load_stage_checkpoint", "read_stage_checkpoint"]

#: the stage checkpoint's copy of pretrained tiny towers (``tower_pretraining``): with it,
#: ``predict`` and ``evaluate`` need neither the tower cache nor the training set to rebuild them
TOWERS_KEY = "pretrained_towers"


def read_stage_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A stage checkpoint (``checkpoints/<stage>.pt``), read safely
    (:func:`~medgrounder.models.checkpoints.read_checkpoint`) and checked for its parts; the
    ``_target_`` values of the parts of its config that get instantiated (``model``, ``data``)
    are checked against the allowlist."""
    ckpt = read_checkpoint(path, mmap=mmap)
    if not isinstance(ckpt, dict) or not {"stage", "state_dict", "config"} <= set(ckpt):
        raise ValueError(f"{path} is not a stage checkpoint (expected the keys stage, state_dict, config; "
                         f"got {sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__})")
    config = ckpt["config"]
    if not isinstance(config, dict) or not isinstance(config.get("stages"), dict) or ckpt["stage"] not in config["stages"]:
        raise ValueError(f"{path}: its config has no stages.{ckpt['stage']} (not a stage checkpoint of this suite)")
    for part in ("model", "data"):
        check_targets(config.get(part), part, origin=f"checkpoint {path}")
    return ckpt


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
    ckpt = read_stage_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(ckpt["config"])
    L.seed_everything(run_cfg.seed, workers=True)  # random tiny towers are rebuilt as in training
    module = instantiate(run_cfg.model)
    built: list = []

    def data():
        if not built:
            built.append(instantiate(run_cfg.data, tokenizer=module.tokenizer))
            built[0].setup("test")
        return built[0]

    if ckpt.get(TOWERS_KEY) is not None:
        module.encoder.load_state_dict(ckpt[TOWERS_KEY])  # keeps the towers' requires_grad flags
    else:  # written before the towers were kept in the checkpoint
        pretrain_configured_towers(run_cfg, module, data)
    load_stage_checkpoint(module, ckpt, ckpt_path)
    return module, run_cfg, ckpt["stage"], data
