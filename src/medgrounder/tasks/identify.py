"""``[identify]``: localization of VinDr-CXR's 22 local findings with boxes (LiteGPT stage 1);
``[grounding]`` is the same task under MiniGPT-v2's identifier (LiteGPT table 6).

The answer lists classes in label order, the boxes of one class left to right (then top to
bottom) joined with ``<delim>``: ``Local diseases of this chest radiograph are <p>Aortic
enlargement</p> {<53><28><65><36>}, <p>Cardiomegaly</p> {<38><49><82><63>}.``; an image
without findings answers :data:`NO_LOCAL_FINDINGS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medgrounder.core.grammar import BOX_DELIM, format_box
from medgrounder.core.labels import LOCAL_INDEX, LOCAL_LABELS
from medgrounder.tasks.base import Target, Task, sorted_boxes

LOCAL_PREFIX = "Local diseases of this chest radiograph are "
NO_LOCAL_FINDINGS = "The chest radiograph shows no findings."
# LiteGPT section 4.4, stage 1.
INSTRUCTION = (
    "Please describe the critical findings along with their localized bounding boxes in the "
    "radiological image of a chest as much detail as possible. If there are no findings, "
    "state that the chest radiograph shows no findings."
)


def identify_answer(findings: Iterable[tuple[str, Sequence[int]]]) -> str:
    """``[(class, grid_box), ...]`` -> the ``[identify]`` answer."""
    by_class: dict[str, list[Sequence[int]]] = {}
    for name, box in findings:
        by_class.setdefault(name, []).append(box)
    if not by_class:
        return NO_LOCAL_FINDINGS
    parts = []
    for name in sorted(by_class, key=lambda n: LOCAL_INDEX[n]):
        boxes = BOX_DELIM.join(format_box(b) for b in sorted_boxes(by_class[name]))
        parts.append(f"<p>{name}</p> {boxes}")
    return LOCAL_PREFIX + ", ".join(parts) + "."


class Identify(Task):
    name = "identify"
    metric_key = "vindr_identify"
    instructions = (INSTRUCTION,)

    def __init__(self, identifier: str | None = None):
        super().__init__(identifier)
        self.name = self.identifier  # [grounding] is its own stage task name

    def answer(self, target: Target) -> str:
        return identify_answer(target.findings)

    def answer_corpus(self) -> list[str]:
        return [LOCAL_PREFIX, NO_LOCAL_FINDINGS,
                *(f"<p>{name}</p> {{<12><34><56><78>}}<delim>{{<90><100><0><5>}}," for name in LOCAL_LABELS)]
