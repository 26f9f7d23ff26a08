"""OmegaConf resolvers the configs use (registered on ``import medgrounder``).

``${mg.slug:${hydra.overrides.task}}`` names a run directory after its command-line overrides, so
re-running the same command finds the same directory and resumes it (``conf/hydra/default.yaml``).
"""

from __future__ import annotations

import hashlib
import re

from omegaconf import OmegaConf

EXPERIMENT_KEYS = ("experiment", "+experiment", "++experiment")
MAX_LEN = 80


def slug(overrides) -> str:
    """``["+experiment=x", "model/encoder=a,b", "seed=1"]`` -> ``"model.encoder=a,b,seed=1"``:
    the overrides in their order, the experiment left out (``task_name`` carries it), characters
    other than letters, digits and ``._=,+-@`` replaced; ``default`` when there are none; long
    names are cut and end with a digest of the whole."""
    kept = [str(o) for o in (overrides or []) if str(o).split("=", 1)[0] not in EXPERIMENT_KEYS]
    if not kept:
        return "default"
    text = ",".join(kept).replace("/", ".")
    text = re.sub(r"[\[\]'\" ]", "", text)
    text = re.sub(r"[^A-Za-z0-9._=,+@-]", "_", text)
    if len(text) > MAX_LEN:
        digest = hashlib.sha1(",".join(kept).encode()).hexdigest()[:10]
        text = f"{text[: MAX_LEN - 11]}-{digest}"
    return text


def register() -> None:
    if not OmegaConf.has_resolver("mg.slug"):
        OmegaConf.register_new_resolver("mg.slug", slug)
