"""What the tasks' parsers share (each task module parses its own answers, design section 5).

The parsers invert the answers the tasks build. They accept spaces inside and between tokens
(``{< 53 >< 28 > <65><36> }``), any letter case, a missing prefix or final period, and never
raise: any ``str`` gives a :class:`Parsed`, anything else an invalid one.

Validity is all-or-nothing: ``valid`` is True only when the whole text was understood.
``findings`` and ``labels`` still hold everything that could be parsed from an invalid answer
(for inspection and plots); metrics score an invalid answer as an empty one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medgrounder.core.boxes import GridBox
from medgrounder.core.grammar import BOX_RE

__all__ = ["Parsed", "grid_box", "norm", "parse_boxes", "prefix_re"]


@dataclass
class Parsed:
    """A parsed answer: ``findings`` are ``(class, grid box)`` pairs (class ``""`` for refer),
    ``labels`` the set of canonical class names."""

    valid: bool
    findings: list[tuple[str, GridBox]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)


def prefix_re(prefix: str) -> re.Pattern[str]:
    """A pattern matching an answer's fixed prefix in any case and spacing, with an optional colon."""
    words = r"\s+".join(re.escape(w) for w in prefix.split())
    return re.compile(r"\s*" + words + r"\b\s*:?", re.IGNORECASE)


def norm(name: str) -> str:
    """Lower case, single spaces, no spaces around ``/``."""
    return re.sub(r"\s*/\s*", "/", " ".join(name.split())).lower()


def _coord(s: str) -> int:
    """A coordinate string -> int clamped to 0-100 (no ``int()`` on huge digit strings)."""
    negative = s.startswith("-")
    digits = s.lstrip("+-").lstrip("0") or "0"
    if negative and digits != "0":
        return 0
    return 100 if len(digits) > 3 else min(100, int(digits))


def grid_box(m: re.Match[str]) -> GridBox:
    """A :data:`~medgrounder.core.grammar.BOX_RE` match -> a grid box (clamped, corners ordered)."""
    x1, y1, x2, y2 = (_coord(g) for g in m.groups())
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def parse_boxes(text: object) -> list[GridBox]:
    """Every ``{<x1><y1><x2><y2>}`` box in ``text`` (clamped to 0-100, corners ordered)."""
    if not isinstance(text, str):
        return []
    return [grid_box(m) for m in BOX_RE.finditer(text)]
