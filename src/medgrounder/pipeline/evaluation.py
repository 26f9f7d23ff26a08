"""One task's evaluation on the test split: generation, the task's metrics beside its baseline,
and its box figure."""

from __future__ import annotations

import logging

from medgrounder.pipeline.figures import draw_panels
from medgrounder.pipeline.generation import generate_rows
from medgrounder.tasks import get_task

__all__ = ["evaluate_task"]

log = logging.getLogger(__name__)


def evaluate_task(module, datamodule, name: str, num_figure_images: int = 8):
    """Generate on the test split for the task ``name``; returns ``({metric key: metrics}, rows,
    figure panels or None)``. The baseline is fitted on the training targets of the task's
    datamodule (``datamodule.for_task(name)``), the figure drawn on its pictures."""
    task = get_task(name)
    rows = generate_rows(module, datamodule.test_dataloader(name), desc=f"generate [{name}] test")
    data = datamodule.for_task(name)
    metrics = task.score(rows)
    metrics.update(task.baseline(data.targets("train"), rows))
    metrics.update({f"num_samples/{split}": n for split, n in data.sample_counts().items()})
    log.info("[%s] %s", name, task.headline(metrics))
    return {task.metric_key: metrics}, rows, draw_panels(rows, task, data, num_figure_images)
