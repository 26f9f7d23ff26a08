"""An evaluation's files: ``predictions.jsonl``, ``metrics.json``, ``tables.md`` (each task's
section, then one table of the text metrics of every task) and ``boxes.png``; each written
atomically (:mod:`medgrounder.core.io`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from PIL import Image

from medgrounder.core.io import atomic_write, atomic_write_text
from medgrounder.metrics.drawing import save_grid
from medgrounder.metrics.tables import text_table
from medgrounder.tasks import METRIC_TASKS, task_for_metric
from medgrounder.tasks.base import paper_view

__all__ = ["render_tables", "write_reports"]


def render_tables(metrics: Mapping[str, Mapping]) -> str:
    """``tables.md``: the sections of ``metrics`` (``{metric key: metrics}``) in the registry's
    order, then the text metrics of every section that has them."""
    parts = ["# Results", ""]
    for key, task in METRIC_TASKS.items():
        section = task.report(metrics[key]) if key in metrics else ""
        if section:
            parts += [section, ""]
    clean = {f"model [{key}]": task_for_metric(key).text_scores(m) for key, m in metrics.items()}
    paper = {f"model [{key}], papers' protocol": task_for_metric(key).text_scores(paper_view(m))
             for key, m in metrics.items()}
    clean, paper = ({name: m for name, m in rows.items() if m} for rows in (clean, paper))
    if paper:
        parts += ["Text validity, papers' protocol (only the boxes removed; stemmed, sentence-split ROUGE; the "
                  "reference's CIDEr; [identify] over the test images with findings)", "", text_table(paper), ""]
    if clean:
        parts += ["Text validity (boxes and <p> tags stripped)", "", text_table(clean), ""]
    return "\n".join(parts)


def write_reports(out_dir: Path, metrics: Mapping[str, Mapping], rows: Sequence[Mapping],
                  figures: Sequence[Sequence[Image.Image]]) -> None:
    """Write the evaluation files into ``out_dir``; ``boxes.png`` tiles every figure's panels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out_dir / "tables.md", render_tables(metrics))
    panels = [p for fig in figures for p in fig]
    if panels:
        atomic_write(out_dir / "boxes.png", lambda tmp: save_grid(panels, tmp, cols=4))
