"""Hydra multirun support: each job's status, and the sweep's summary table.

Every job of ``python -m medgrounder.train -m ...`` writes ``status.json`` in its directory
(``running`` -> ``done`` | ``failed`` with the error). A failing job is logged and recorded, and
the sweep goes on (:func:`medgrounder.train.main`). At the end, :class:`SweepCallback` writes
``summary.md``, ``summary.csv`` and ``summary.json`` into the sweep directory (one row per job:
its overrides, status and metrics), prints the table, and ends the command with an error when a
job failed, so scripts notice.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from medgrounder.core.io import atomic_write_json, atomic_write_text
from medgrounder.tasks import METRIC_TASKS
from medgrounder.utils.logging import flatten_metrics

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
#: ``summary.md``'s columns: each task's sweep columns, in the registry's order
DEFAULT_METRICS = tuple(f"{key}/{c}" for key, task in METRIC_TASKS.items() for c in task.sweep_columns)


def write_status(out_dir: str | Path, status: str, error: BaseException | None = None) -> None:
    """``status.json``: ``running`` | ``done`` | ``failed`` (+ ``error``, the traceback's last lines)."""
    payload: dict[str, Any] = {"status": status}
    if error is not None:
        payload["error"] = f"{type(error).__name__}: {error}".strip()
        payload["traceback"] = "".join(traceback.format_exception(error))[-4000:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / STATUS_FILE, payload)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or (p / STATUS_FILE).is_file())]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def collect(sweep_dir: str | Path) -> list[dict]:
    """One row per job directory of the sweep: ``job``, ``overrides``, ``status`` (``done``,
    ``failed``, ``incomplete`` when it stopped without a word, e.g. killed), ``error`` and the
    flattened ``metrics``."""
    rows = []
    for job in _job_dirs(Path(sweep_dir)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        status: dict = {}
        if (job / STATUS_FILE).is_file():
            status = json.loads((job / STATUS_FILE).read_text())
        state = status.get("status", "incomplete")
        if state == "running":
            state = "incomplete"
        metrics = {}
        if (job / "metrics.json").is_file() and state == "done":
            metrics = flatten_metrics(json.loads((job / "metrics.json").read_text()))
        rows.append({"job": job.name, "dir": str(job), "overrides": [str(o) for o in overrides], "status": state,
                     "error": status.get("error", ""), "metrics": metrics})
    return rows


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(sweep_dir: str | Path, metrics: tuple[str, ...] | list[str] = DEFAULT_METRICS) -> list[dict]:
    """Write ``summary.md`` (the chosen ``metrics`` as columns), ``summary.csv`` (every metric)
    and ``summary.json`` into ``sweep_dir``; returns the rows (:func:`collect`)."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    shown = [m for m in metrics if any(m in r["metrics"] for r in rows)]
    # The table shows what varies between jobs; what they share is said once above it.
    common = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
    header = ["job", "overrides", "status", *shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        varying = " ".join(o for o in r["overrides"] if o not in common)
        cells = [r["job"], f"`{varying}`" if varying else "", r["status"],
                 *(_fmt(r["metrics"].get(m)) for m in shown)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    failed = [r for r in rows if r["status"] != "done"]
    shared = [o for o in (rows[0]["overrides"] if rows else []) if o in common]
    text = [f"# Sweep {sweep_dir.name}", "", f"{len(rows) - len(failed)} of {len(rows)} jobs done.", ""]
    if shared:
        text += ["Every job: `" + " ".join(shared) + "`", ""]
    text += [*lines, ""]
    for r in failed:
        text.append(f"- job {r['job']} {r['status']}: {r['error'] or 'no status (killed?)'} ({r['dir']})")
    atomic_write_text(sweep_dir / "summary.md", "\n".join(text) + "\n")
    all_metrics = sorted({k for r in rows for k in r["metrics"]})
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["job", "overrides", "status", "error", *all_metrics])
    for r in rows:
        w.writerow([r["job"], " ".join(r["overrides"]), r["status"], r["error"],
                    *(r["metrics"].get(m, "") for m in all_metrics)])
    atomic_write_text(sweep_dir / "summary.csv", table.getvalue())
    atomic_write_text(sweep_dir / "summary.json", json.dumps(rows, indent=2, sort_keys=True) + "\n")
    return rows


class SweepCallback(Callback):
    """Hydra callback (``conf/hydra/default.yaml``).

    ``on_multirun_start`` pins the sweep directory: it is named after the sweep's overrides
    (``${mg.slug:${hydra.overrides.task}}``), but Hydra recomposes each job's config from that
    job's own overrides, which would name another directory; the resolved name is added to the
    hydra overrides the jobs are composed with. ``on_multirun_end`` writes the summary.

    Hydra turns a callback's exceptions into warnings, so the checks here end the command with
    ``SystemExit`` instead."""

    def __init__(self, metrics: list[str] | None = None, fail_on_error: bool = True):
        self.metrics = tuple(metrics) if metrics else DEFAULT_METRICS
        self.fail_on_error = fail_on_error

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        devices = OmegaConf.select(config, "trainer.devices")
        if launcher.endswith("SlurmLauncher") and not isinstance(devices, int):
            sys.exit(f"hydra/launcher=submitit_slurm starts one task per GPU: trainer.devices must be the number "
                     f"of GPUs per node (an integer), got {devices!r}")
        hydra_overrides = list(config.hydra.overrides.hydra)
        if any(str(o).startswith("hydra.sweep.dir=") for o in hydra_overrides):
            return
        sweep_dir = str(config.hydra.sweep.dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir='{sweep_dir}'")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        if rank_zero_only.rank != 0:  # a sweep under torchrun: every rank ran every job
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        rows = write_summary(sweep_dir, self.metrics)
        print((sweep_dir / "summary.md").read_text())
        log.info("sweep summary: %s", sweep_dir / "summary.md")
        failed = [r["job"] for r in rows if r["status"] != "done"]
        if failed and self.fail_on_error:
            sys.exit(f"{len(failed)} of {len(rows)} jobs did not finish (jobs {', '.join(failed)}); the others did. "
                     f"See {sweep_dir / 'summary.md'}")
