"""What a config read from a file may instantiate.

A stage checkpoint carries its run's resolved config, and ``evaluate`` / ``predict`` rebuild the
model and data from it. Hydra's ``instantiate`` calls whatever ``_target_`` names, so a checkpoint
from elsewhere could name ``builtins.open`` or ``os.system``. :func:`check_targets` allows only
the package's own classes and the library callables the shipped configs name
(:data:`LIBRARY_TARGETS`; ``tests/test_checkpoint_safety.py`` checks it covers every ``_target_``
in ``conf/``), and refuses anything else naming its key.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping, Sequence

#: library callables that ``conf/**/*.yaml`` names as ``_target_``
LIBRARY_TARGETS = frozenset({
    "datetime.timedelta",
    "hydra.utils.get_class",
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.LearningRateMonitor",
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.strategies.DDPStrategy",
    "lightning.pytorch.strategies.DeepSpeedStrategy",
    "lightning.pytorch.strategies.FSDPStrategy",
    "torch.distributed.fsdp.wrap.ModuleWrapPolicy",
})
#: the package's callables that are functions, not classes, and that the shipped configs name
PACKAGE_FUNCTIONS = frozenset({"medgrounder.utils.logging.wandb_logger"})


class DisallowedTargetError(ValueError):
    """A config names a ``_target_`` outside the allowlist."""


def _package_class(target: str) -> bool:
    """``target`` names a class defined in medgrounder (not one a module merely imports)."""
    module_name, _, attr = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return inspect.isclass(obj) and obj.__module__.split(".")[0] == "medgrounder"


def allowed_target(target: object) -> bool:
    if not isinstance(target, str):
        return False
    if target in LIBRARY_TARGETS or target in PACKAGE_FUNCTIONS:
        return True
    return target.startswith("medgrounder.") and _package_class(target)


def check_targets(node: object, key: str = "", origin: str = "config") -> None:
    """Walk a plain config (dicts and lists); raise :class:`DisallowedTargetError` at the first
    ``_target_`` that is not allowed, e.g. ``model.encoder._target_: builtins.open is not allowed``."""
    if isinstance(node, Mapping):
        if "_target_" in node and not allowed_target(node["_target_"]):
            where = f"{key}._target_" if key else "_target_"
            raise DisallowedTargetError(
                f"{origin}: {where}: {node['_target_']} is not allowed (a stored config may instantiate "
                "medgrounder's classes and the library classes its shipped configs name)")
        for k, v in node.items():
            check_targets(v, f"{key}.{k}" if key else str(k), origin)
    elif isinstance(node, Sequence) and not isinstance(node, str | bytes):
        for i, v in enumerate(node):
            check_targets(v, f"{key}[{i}]", origin)
