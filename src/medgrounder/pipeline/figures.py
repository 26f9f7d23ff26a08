"""The box figure of an evaluation (LiteGPT figure 3): ground truth in green, predictions in red,
on the first test images that have ground-truth boxes, for every task that draws one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from PIL import Image

from medgrounder.metrics.drawing import draw_boxes
from medgrounder.tasks import Task

__all__ = ["draw_panels"]


def draw_panels(rows: Sequence[Mapping], task: Task, data, n: int) -> list[Image.Image] | None:
    """One panel for each of the first ``n`` rows with ground-truth boxes (None when none, or
    when ``task`` draws no figure). ``data.picture(image_id)`` (the task's datamodule) gives the
    image to draw on (e.g. the original DICOM, or a cached resize) and the factors from original
    pixels onto it; the task says which boxes and title a row shows."""
    if not task.draws_figure:
        return None
    panels = []
    for row in rows:
        if len(panels) >= n:
            break
        if not row.get("gt_boxes"):
            continue
        img, sx, sy = data.picture(row["image_id"])
        panels.append(draw_boxes(img, _scaled(task.gt_boxes(row), sx, sy), _scaled(task.predicted_boxes(row), sx, sy),
                                 title=task.figure_title(row)))
    return panels or None


def _scaled(boxes, sx: float, sy: float) -> list[tuple[str, tuple[float, ...]]]:
    return [(name, (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)) for name, b in boxes]
