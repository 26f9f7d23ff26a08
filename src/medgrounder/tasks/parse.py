"""What the tasks' parsers share (each task module parses its own answers, design section 5).

The parsers invert the answers the tasks build. They accept spaces inside and between tokens
(``{< 53 >< 28 > <65><36> }``), any letter case, a missing prefix or final period, and never
raise: any ``str`` gives a :class:`Parsed`, anything else an invalid one.

Answers are scored **pair by pair** (design section 7): ``findings`` holds every well-formed
``<p>class</p> {box}`` pair of the answer (and each box joined to it with ``<delim>``), whatever
surrounds it: an unknown class or a truncated tail drops only what it touches. ``valid`` is a
separate diagnostic (``valid_rate``): True only when the whole text was understood.

A **well-formed box** (:func:`well_formed_box`) has four integers in 0..100 with ``x1 < x2`` and
``y1 < y2``: anything else (``{<65><36><53><28>}``, ``{<0><0><250><9>}``) is not a box of the
answer, never counts and makes the answer invalid. References, which the tasks write themselves,
are read leniently instead (:func:`grid_box`: clamped, corners ordered), so a tiny ground-truth
box that rounds to one grid column is never lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from medgrounder.core.boxes import GridBox
from medgrounder.core.grammar import BOX_RE, DELIM_RE, PHRASE_RE

__all__ = ["Pair", "Parsed", "grid_box", "grounded_pairs", "mentioned", "norm", "parse_boxes", "prefix_re",
           "well_formed_box"]


@dataclass
class Parsed:
    """A parsed answer: ``findings`` are the well-formed ``(class, grid box)`` pairs (class ``""``
    for refer), ``labels`` the set of canonical class names it names, ``valid`` whether the whole
    answer follows the grammar."""

    valid: bool
    findings: list[tuple[str, GridBox]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Pair:
    """One well-formed box of an answer: its canonical ``label`` (``""`` where the answer names
    none, e.g. ``[refer]``), the grid ``box`` and the character ``span`` of the box text (so a
    caller can find the tokens that wrote it); ``label_span`` that of the name in its ``<p>`` tag
    (None where there is no name): boxes of one group share it."""

    label: str
    box: GridBox
    span: tuple[int, int]
    label_span: tuple[int, int] | None = None


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
    """A :data:`~medgrounder.core.grammar.BOX_RE` match read leniently (references): clamped to
    0-100, corners ordered."""
    x1, y1, x2, y2 = (_coord(g) for g in m.groups())
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def well_formed_box(m: re.Match[str]) -> GridBox | None:
    """A :data:`~medgrounder.core.grammar.BOX_RE` match -> its grid box when well formed (unsigned
    integers 0..100, ``x1 < x2``, ``y1 < y2``), else None."""
    groups = m.groups()
    if any(not g.isdigit() or len(g.lstrip("0")) > 3 for g in groups):
        return None
    x1, y1, x2, y2 = (int(g) for g in groups)
    if max(x1, y1, x2, y2) > 100 or x1 >= x2 or y1 >= y2:
        return None
    return (x1, y1, x2, y2)


def parse_boxes(text: object) -> list[GridBox]:
    """Every well-formed ``{<x1><y1><x2><y2>}`` box in ``text`` (:func:`well_formed_box`)."""
    if not isinstance(text, str):
        return []
    return [b for m in BOX_RE.finditer(text) if (b := well_formed_box(m)) is not None]


_S = r"\s*"
#: a ``<p>name</p>`` phrase directly followed by a box and any ``<delim>``-joined boxes
GROUP_RE = re.compile(PHRASE_RE.pattern + _S + BOX_RE.pattern + f"(?:{_S}{DELIM_RE.pattern}{_S}{BOX_RE.pattern})*",
                      re.IGNORECASE)


def grounded_pairs(text: object, names: Mapping[str, str],
                   read_box: Callable[[re.Match[str]], GridBox | None] = well_formed_box) -> list[Pair]:
    """Every box that follows a ``<p>name</p>`` phrase (directly, or through ``<delim>``-joined
    boxes) and whose name is known, in text order: the pairs an answer is scored by.

    ``names``: :func:`norm` of a name -> its canonical label; an unknown name drops its own boxes
    only. ``read_box`` turns a box match into a grid box or None (not counted); the default keeps
    the well-formed ones. Text around, between and after the groups (chatter, a truncated last
    box) is ignored. Never raises on a ``str``; anything else has no pairs.
    """
    if not isinstance(text, str):
        return []
    out = []
    for g in GROUP_RE.finditer(text):
        label = names.get(norm(g.group(1)))
        if label is None:
            continue
        for m in BOX_RE.finditer(text, g.start(), g.end()):
            box = read_box(m)
            if box is not None:
                out.append(Pair(label, box, m.span(), g.span(1)))
    return out


_TAG_RE = re.compile(r"<[^<>]*>")


def mentioned(text: object, names: Mapping[str, str]) -> set[str]:
    """The canonical labels whose names appear anywhere in ``text`` as whole words (LiteGPT's
    reference extraction: tags removed, case ignored, no structure; but "pneumonias" or
    "ILDs" do not name a label). ``names``: :func:`norm` of each spelling -> its label."""
    if not isinstance(text, str):
        return set()
    body = norm(_TAG_RE.sub(" ", text))
    found = set()
    for spelling, label in names.items():
        if re.search(r"(?<![a-z0-9])" + re.escape(spelling) + r"(?![a-z0-9])", body):
            found.add(label)
    return found
