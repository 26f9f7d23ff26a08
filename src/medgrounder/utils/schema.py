"""Types and ranges of the numeric settings users set (and the choices of a few named ones),
checked at start-up.

``stages.identify.max_steps=abc`` or ``data.batch_size=0`` would otherwise fail minutes later
(after data writing, tower pretraining, feature caching) in Lightning or PyTorch, without naming
the key. :func:`check_values` reports every wrong value at once, each with its key, before any
work. A key absent from the config is not checked (configs differ per experiment); ``*`` matches
any one key (each stage, each task of a multi-task datamodule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from medgrounder.data.vindr.records import DEDUP_MODES, FUSION_CONF_TYPES, LABEL_FUSIONS
from medgrounder.models.decoding import BOX_SCORES


class ConfigValueError(ValueError):
    """Settings of the wrong type or out of range; the message lists each key and value."""


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


Rule = tuple[Callable[[object], bool], str]

POSITIVE_INT: Rule = (lambda v: _int(v) and v > 0, "an integer > 0")
COUNT: Rule = (lambda v: _int(v) and v >= 0, "an integer >= 0")
STEPS: Rule = (lambda v: _int(v) and v >= -1, "an integer >= 0, or -1 for no limit")
SEED: Rule = (lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 2**32)")
POSITIVE: Rule = (lambda v: _real(v) and v > 0, "a number > 0")
NON_NEGATIVE: Rule = (lambda v: _real(v) and v >= 0, "a number >= 0")
FRACTION: Rule = (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)")
IOU_THRESHOLD: Rule = (lambda v: _real(v) and 0 <= v < 1, "a number in [0, 1)")


def _choice(*values: str) -> Rule:
    return (lambda v: isinstance(v, str) and v in values, "one of " + ", ".join(values))


BETAS: Rule = (lambda v: isinstance(v, list | tuple | ListConfig) and len(v) == 2 and all(_real(b) and 0 <= b < 1 for b in v),
               "two numbers in [0, 1), e.g. [0.9, 0.999]")


BOOL: Rule = (lambda v: isinstance(v, bool), "true or false")


def _devices(v) -> bool:
    if _int(v):
        return v > 0 or v == -1
    if isinstance(v, str):
        return v == "auto" or (all(p.strip().isdigit() for p in v.split(",") if p.strip()) and v.strip(", ") != "")
    if isinstance(v, list | tuple | ListConfig):
        return len(v) > 0 and all(_int(d) and d >= 0 for d in v)
    return False


DEVICES: Rule = (_devices, "an integer > 0, -1 (all), 'auto', or a list of device indices")

_OPTIM = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_steps": COUNT, "warmup_start_lr": NON_NEGATIVE,
          "min_lr": NON_NEGATIVE, "encoder_lr": POSITIVE, "betas": BETAS}
_TRAINER = {"devices": DEVICES, "num_nodes": POSITIVE_INT, "accumulate_grad_batches": POSITIVE_INT,
            "gradient_clip_val": NON_NEGATIVE, "log_every_n_steps": POSITIVE_INT,
            "check_val_every_n_epoch": POSITIVE_INT}
_DATA = {"batch_size": POSITIVE_INT, "eval_batch_size": POSITIVE_INT, "num_workers": COUNT, "decode_workers": COUNT,
         "val_fraction": FRACTION, "limit_train_images": POSITIVE_INT,
         # VinDr label fusion (data/vindr/records.py)
         "label_fusion": _choice(*LABEL_FUSIONS), "dedup_iou": IOU_THRESHOLD, "dedup_mode": _choice(*DEDUP_MODES),
         "fusion_iou": IOU_THRESHOLD, "fusion_conf_type": _choice(*FUSION_CONF_TYPES), "min_votes": POSITIVE_INT}
_DATA_NULLABLE = ("limit_train_images", "decode_workers", "min_votes")

#: key pattern -> (rule, whether null is allowed)
VALUE_RULES: dict[str, tuple[Rule, bool]] = {
    "seed": (SEED, False),
    "num_figure_images": (COUNT, False),
    "stages.*.max_steps": (STEPS, True),
    "stages.*.max_epochs": (STEPS, True),
    "stages.*.iters_per_epoch": (POSITIVE_INT, True),
    **{f"model.optim.{k}": (r, k == "encoder_lr") for k, r in _OPTIM.items()},
    **{f"stages.*.optim.{k}": (r, k == "encoder_lr") for k, r in _OPTIM.items()},
    "model.max_new_tokens": (POSITIVE_INT, False),
    "model.constrained_decoding": (BOOL, False),
    "model.box_score": (_choice(*BOX_SCORES), False),
    "model.image_size": (POSITIVE_INT, False),
    "model.visual_tokens": (POSITIVE_INT, True),
    **{f"data.{k}": (r, k in _DATA_NULLABLE) for k, r in _DATA.items()},
    **{f"data.tasks.*.{k}": (r, k in _DATA_NULLABLE) for k, r in _DATA.items()},
    **{f"trainer.{k}": (r, k == "gradient_clip_val") for k, r in _TRAINER.items()},
    **{f"stages.*.trainer.{k}": (r, k == "gradient_clip_val") for k, r in _TRAINER.items()},
    "tower_pretraining.steps": (COUNT, False),
    "tower_pretraining.lr": (POSITIVE, False),
    "tower_pretraining.warmup_steps": (COUNT, False),
    "tower_pretraining.batch_size": (POSITIVE_INT, False),
    "tower_pretraining.box_weight": (NON_NEGATIVE, False),
    "tower_pretraining.finding_weight": (NON_NEGATIVE, False),
    "checkpointing.every_n_train_steps": (POSITIVE_INT, True),
    "checkpointing.every_n_minutes": (POSITIVE, True),
}


def _expand(node, parts: list[str], prefix: str) -> Iterator[tuple[str, object]]:
    """``(key, value)`` of every key the pattern ``parts`` matches under ``node``."""
    if not parts:
        yield prefix, node
        return
    if not isinstance(node, DictConfig):
        return
    head, rest = parts[0], parts[1:]
    names = list(node.keys()) if head == "*" else [head] if head in node else []
    for name in names:
        yield from _expand(node.get(name), rest, f"{prefix}.{name}" if prefix else str(name))


def value_problems(cfg: DictConfig) -> list[str]:
    """One line per wrong value: ``key=value: must be ...``."""
    problems = []
    for pattern, ((ok, wanted), nullable) in VALUE_RULES.items():
        for key, value in _expand(cfg, pattern.split("."), ""):
            if value is None and nullable:
                continue
            shown = OmegaConf.to_container(value) if isinstance(value, DictConfig | ListConfig) else value
            if value is None or not ok(value):
                problems.append(f"{key}={shown!r}: must be {wanted}{' or null' if nullable else ''}")
    return problems


def check_values(cfg: DictConfig) -> None:
    """Raise :class:`ConfigValueError` listing every wrong value (key, value, what it must be)."""
    problems = value_problems(cfg)
    if problems:
        raise ConfigValueError("Wrong values:\n  - " + "\n  - ".join(problems))
