"""The answer grammar shared by the tasks (design section 5): a box is ``{<x1><y1><x2><y2>}`` on
the 0-100 grid, boxes of one class or phrase are joined with ``<delim>``, class names sit in
``<p>...</p>`` tags. The patterns accept spaces inside and between tokens and any case of the
tags, as the parsers do."""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["BOX_DELIM", "BOX_RE", "DELIM_RE", "PHRASE_RE", "TAG_RE", "format_box", "strip_grounding"]

BOX_DELIM = "<delim>"

_COORD = r"<\s*([+-]?[0-9]+)\s*>"
#: a box; its four groups are the coordinate strings
BOX_RE = re.compile(r"\{\s*" + r"\s*".join([_COORD] * 4) + r"\s*\}")
DELIM_RE = re.compile(r"<\s*delim\s*>", re.IGNORECASE)
#: a ``<p>name</p>`` phrase; a class name never contains brackets, which keeps the scan linear
#: on unterminated tags
PHRASE_RE = re.compile(r"<\s*p\s*>([^<>{}]*)<\s*/\s*p\s*>", re.IGNORECASE)
TAG_RE = re.compile(r"<\s*/?\s*p\s*>", re.IGNORECASE)


def format_box(grid: Sequence[int]) -> str:
    """``(38, 49, 82, 63)`` -> ``{<38><49><82><63>}``."""
    return "{" + "".join(f"<{int(v)}>" for v in grid) + "}"


def strip_grounding(text: object, keep_tags: bool = False) -> str:
    """Remove boxes and ``<delim>`` (and ``<p>`` tags unless ``keep_tags``) from an answer;
    whitespace is collapsed and no space is left before ``, . ; :``. Non-str gives ``""``."""
    if not isinstance(text, str):
        return ""
    text = DELIM_RE.sub(" ", BOX_RE.sub(" ", text))
    if not keep_tags:
        text = TAG_RE.sub(" ", text)
    text = " ".join(text.split())
    return re.sub(r"\s+([,.;:])", r"\1", text)
