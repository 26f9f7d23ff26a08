"""The tasks: one object per task owns its prompt identifier, instructions and answers (and,
through its module, parsing, scoring, baseline, report and figure). Nothing outside this package
compares task names: callers look a task up here.

``identify``  VinDr-CXR localization with boxes (LiteGPT stage 1); ``grounding`` is the same task
              under MiniGPT-v2's identifier (LiteGPT table 6)
``vqa``       VinDr-CXR diagnosis of the global labels (LiteGPT stage 2)
``refer``     MS-CXR phrase grounding (PFMVG stage 2)
``caption``   captioning (PFMVG stage 1)
"""

from __future__ import annotations

from medgrounder.tasks.base import Target, Task
from medgrounder.tasks.caption import Caption
from medgrounder.tasks.identify import Identify
from medgrounder.tasks.refer import Refer
from medgrounder.tasks.vqa import Vqa

__all__ = ["METRIC_TASKS", "TASKS", "Target", "Task", "get_task", "phrase_task", "row_tasks", "task_for_metric"]

TASKS: dict[str, Task] = {
    t.name: t for t in (Identify(), Identify("grounding"), Vqa(), Refer(), Caption())
}
#: the task that scores and reports each section of ``metrics.json`` (the first registered with
#: that key: ``vindr_identify`` is ``[identify]``'s, which ``[grounding]`` shares), in report order
METRIC_TASKS: dict[str, Task] = {
    key: next(t for t in TASKS.values() if t.metric_key == key) for key in dict.fromkeys(t.metric_key for t in TASKS.values())
}


def get_task(name: str) -> Task:
    """The task of a stage's ``task`` name (or a row's ``task`` field)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None


def task_for_metric(key: str) -> Task:
    """The task of a ``metrics.json`` section (``score --task``)."""
    try:
        return METRIC_TASKS[key]
    except KeyError:
        raise ValueError(f"unknown metrics section {key!r} (known: {', '.join(METRIC_TASKS)})") from None


def row_tasks(key: str) -> frozenset[str] | None:
    """The values of a row's ``task`` field that the section ``key`` scores: the key and the
    names of its tasks; None when it scores rows of any task."""
    if METRIC_TASKS[key].scores_any_row:
        return None
    return frozenset({key, *(name for name, t in TASKS.items() if t.metric_key == key)})


def phrase_task() -> Task:
    """The task that grounds a phrase (``predict``'s task when given one)."""
    return next(t for t in TASKS.values() if t.takes_phrase)
