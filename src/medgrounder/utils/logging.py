"""Loggers: W&B online when it can be, offline otherwise, so a run never stalls on the network."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def _wandb_reachable(timeout: float = 2.0) -> bool:
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_wandb_mode(mode: str = "auto") -> str:
    """``auto``: ``online`` with an API key and a reachable server, else ``offline``.
    ``WANDB_MODE`` in the environment wins, as in wandb itself."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    return "online" if _has_wandb_key() and _wandb_reachable() else "offline"


def wandb_logger(project: str, save_dir: str, mode: str = "auto", entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, name: str | None = None,
                 job_type: str | None = None, run_config: dict | None = None, id: str | None = None):
    """A Lightning ``WandbLogger``; in offline mode the run directory is logged for ``wandb sync``.
    ``id``: continue that W&B run (``resume="allow"``), as a resumed training stage does."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(mode)
    if mode == "disabled":
        return None
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    kwargs = dict(project=project, entity=entity, group=group, tags=list(tags or []), name=name,
                  job_type=job_type, save_dir=save_dir, mode=mode, config=run_config)
    logger = WandbLogger(**kwargs, **({"id": id, "resume": "allow"} if id else {}))
    if rank_zero_only.rank != 0:  # other ranks have no W&B run
        return logger
    if id:
        try:
            logger.experiment  # noqa: B018 - start the run now: can its id be continued?
        except Exception as err:  # "run ID ... is in use": a W&B service still holds it
            log.warning("W&B run %s cannot be continued (%s); logging to a new run", id, err)
            logger = WandbLogger(**kwargs)
    if mode == "offline":
        log.info("W&B is offline; sync later with: wandb sync %s", Path(logger.experiment.dir).parent)
    return logger


def log_wandb_predictions(logger, task: str, rows: list[dict], panels: list | None, max_rows: int = 500) -> None:
    """A stage's test answers as W&B tables: every answer beside its reference (first
    ``max_rows``), and the box pictures (ground truth green, predictions red) beside theirs.
    ``panels`` are :func:`medgrounder.pipeline.figures.draw_panels`'s, drawn for the first test rows with
    ground-truth boxes, in order."""
    import wandb

    columns = ["id", "image_id", "prediction", "reference"]
    answers = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows[:max_rows]])
    payload = {f"test/{task}/answers": answers}
    shown = [r for r in rows if r.get("gt_boxes")][: len(panels or [])]
    if shown:
        payload[f"test/{task}/boxes"] = wandb.Table(
            columns=["image_id", "boxes", "prediction", "reference"],
            data=[[r["image_id"], wandb.Image(p, caption="green: truth, red: predicted"), r["prediction"],
                   r["reference"]] for r, p in zip(shown, panels, strict=False)],
        )
    logger.experiment.log(payload)


def flatten_metrics(d: dict, prefix: str = "") -> dict[str, float]:
    """``{"vindr_vqa": {"micro/f1": 0.7}}`` -> ``{"vindr_vqa/micro/f1": 0.7}`` (numbers only)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out
