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

__all__ = ["TASKS", "Target", "Task", "get_task"]

TASKS: dict[str, Task] = {
    t.name: t for t in (Identify(), Identify("grounding"), Vqa(), Refer(), Caption())
}


def get_task(name: str) -> Task:
    """The task of a stage's ``task`` name (or a row's ``task`` field)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r} (known: {', '.join(TASKS)})") from None
