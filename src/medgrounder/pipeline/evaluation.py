"""One task's evaluation on the test split: generation, the task's metrics beside its baseline
(in the run's evaluation protocol), and its box figure."""

from __future__ import annotations

import logging

from medgrounder.pipeline.figures import draw_panels
from medgrounder.pipeline.generation import generate_rows
from medgrounder.tasks import get_task

__all__ = ["evaluate_task", "score_rows"]

log = logging.getLogger(__name__)


def score_rows(rows: list[dict], datamodule, name: str, protocol: str = "both") -> dict:
    """``{metric key: metrics}`` of generated rows of the task ``name`` in ``protocol`` (``clean``,
    ``paper`` or ``both``), beside the baseline fitted on the training targets of the task's
    datamodule (``datamodule.for_task(name)``)."""
    task = get_task(name)
    data = datamodule.for_task(name)
    metrics = task.score(rows, protocol=protocol)
    metrics.update(task.baseline(data.targets("train"), rows, protocol=protocol))
    metrics.update({f"num_samples/{split}": n for split, n in data.sample_counts().items()})
    log.info("[%s] %s", name, task.headline(metrics))
    return {task.metric_key: metrics}


def evaluate_task(module, datamodule, name: str, num_figure_images: int = 8, protocol: str = "both",
                  max_new_tokens: int | None = None):
    """Generate on the test split for the task ``name`` (at most ``max_new_tokens`` new tokens an
    answer; None: the model's ``max_new_tokens``); returns ``({metric key: metrics}, rows, figure
    panels or None)`` (:func:`score_rows`; the figure drawn on the task's datamodule's pictures)."""
    task = get_task(name)
    labels = task.vocabulary(datamodule.for_task(name).targets("train"))
    rows = generate_rows(module, datamodule.test_dataloader(name), desc=f"generate [{name}] test",
                         max_new_tokens=max_new_tokens, labels=labels)
    metrics = score_rows(rows, datamodule, name, protocol)
    return metrics, rows, draw_panels(rows, task, datamodule.for_task(name), num_figure_images)
