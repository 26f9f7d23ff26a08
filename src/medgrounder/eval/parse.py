"""Parse generated answers back into labels and grid boxes (design section 5).

The parsers invert :func:`medgrounder.tasks.identify.identify_answer` and
:func:`~medgrounder.tasks.vqa.vqa_answer` and the MS-CXR ``[refer]`` answer. They accept
spaces inside and between tokens (``{< 53 >< 28 > <65><36> }``), any letter case, a missing
prefix or final period, and never raise: any ``str`` gives a :class:`Parsed`, anything else an
invalid one.

Validity is all-or-nothing: ``valid`` is True only when the whole text was understood.
``findings`` and ``labels`` still hold everything that could be parsed from an invalid answer
(for inspection and plots); metrics score an invalid answer as an empty one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from medgrounder.core.boxes import GridBox
from medgrounder.core.grammar import BOX_RE, DELIM_RE, PHRASE_RE
from medgrounder.core.labels import GLOBAL_ALIASES, GLOBAL_LABELS, LOCAL_LABELS, NO_FINDING
from medgrounder.tasks.identify import LOCAL_PREFIX
from medgrounder.tasks.vqa import GLOBAL_PREFIX

__all__ = ["Parsed", "parse_boxes", "parse_identify", "parse_refer", "parse_vqa"]


@dataclass
class Parsed:
    """A parsed answer: ``findings`` are ``(class, grid box)`` pairs (class ``""`` for refer),
    ``labels`` the set of canonical class names."""

    valid: bool
    findings: list[tuple[str, GridBox]] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)


_SEP_RE = re.compile(r"(?:[\s,;:.]+|and\b)", re.IGNORECASE)
_TOKEN_START_RE = re.compile(r"[<{]")


def _prefix_re(prefix: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in prefix.split())
    return re.compile(r"\s*" + words + r"\b\s*:?", re.IGNORECASE)


_LOCAL_PREFIX_RE = _prefix_re(LOCAL_PREFIX)
_GLOBAL_PREFIX_RE = _prefix_re(GLOBAL_PREFIX)

_NO_FINDINGS_RES = [
    re.compile(p)
    for p in (
        r"none",
        r"(?:(?:the|this) )?(?:chest )?(?:radiograph|x-ray|xray|image|study)"
        r"(?: (?:shows|has|demonstrates|reveals|with))? no (?:\w+ )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)",
        r"no (?:(?:local|significant|acute|abnormal|critical|visible) )?"
        r"(?:findings?|abnormalit(?:y|ies)|diseases?)(?: (?:found|detected|seen|present))?",
    )
]


def _norm(name: str) -> str:
    """Lower case, single spaces, no spaces around ``/``."""
    return re.sub(r"\s*/\s*", "/", " ".join(name.split())).lower()


_LOCAL_NAMES = {_norm(n): n for n in LOCAL_LABELS}
_GLOBAL_NAMES = {_norm(n): n for n in GLOBAL_LABELS}
_GLOBAL_NAMES.update({_norm(a): c for a, c in GLOBAL_ALIASES.items()})
_GLOBAL_NAMES[_norm("No findings")] = NO_FINDING


def _coord(s: str) -> int:
    """A coordinate string -> int clamped to 0-100 (no ``int()`` on huge digit strings)."""
    negative = s.startswith("-")
    digits = s.lstrip("+-").lstrip("0") or "0"
    if negative and digits != "0":
        return 0
    return 100 if len(digits) > 3 else min(100, int(digits))


def _box(m: re.Match[str]) -> GridBox:
    x1, y1, x2, y2 = (_coord(g) for g in m.groups())
    return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))


def parse_boxes(text: object) -> list[GridBox]:
    """Every ``{<x1><y1><x2><y2>}`` box in ``text`` (clamped to 0-100, corners ordered)."""
    if not isinstance(text, str):
        return []
    return [_box(m) for m in BOX_RE.finditer(text)]


def _is_no_findings(text: str) -> bool:
    m = _LOCAL_PREFIX_RE.match(text)
    body = " ".join(text[m.end() if m else 0 :].lower().split()).strip(" .!")
    return any(r.fullmatch(body) for r in _NO_FINDINGS_RES)


def parse_identify(text: object) -> Parsed:
    """Parse an ``[identify]`` answer into ``(local class, grid box)`` findings.

    Grammar: optional :data:`LOCAL_PREFIX`, then groups ``<p>Class</p> box (<delim> box)*``
    separated by commas / whitespace / "and", then an optional period. Class names match the
    22 local labels case- and whitespace-insensitively; a class may repeat (its boxes add up).
    A "no findings" sentence (e.g. :data:`NO_LOCAL_FINDINGS`) is valid with no findings.

    Invalid (``valid=False``): empty or non-str text, an unknown class, a ``<p>`` phrase with
    no box, a box before any phrase, a dangling ``<delim>``, or any other text (truncated
    tokens, chatter). Findings of the known classes are still returned.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(False)
    if not BOX_RE.search(text) and not PHRASE_RE.search(text) and _is_no_findings(text):
        return Parsed(True)

    m = _LOCAL_PREFIX_RE.match(text)
    pos = m.end() if m else 0
    valid = True
    findings: list[tuple[str, GridBox]] = []
    current: str | None = None  # canonical class of the open group, "" if unknown
    n_boxes = 0  # boxes in the open group
    pending_delim = False  # a <delim> waiting for its box
    n_groups = 0
    while pos < len(text):
        if m := _SEP_RE.match(text, pos):
            pos = m.end()
        elif m := PHRASE_RE.match(text, pos):
            if (current is not None and n_boxes == 0) or pending_delim:
                valid = False
            current = _LOCAL_NAMES.get(_norm(m.group(1)), "")
            valid &= bool(current)
            n_boxes, pending_delim, n_groups = 0, False, n_groups + 1
            pos = m.end()
        elif m := BOX_RE.match(text, pos):
            if current is None:
                valid = False
            elif current:
                findings.append((current, _box(m)))
            n_boxes, pending_delim = n_boxes + 1, False
            pos = m.end()
        elif m := DELIM_RE.match(text, pos):
            valid &= n_boxes > 0 and not pending_delim
            pending_delim = True
            pos = m.end()
        else:  # unrecognised text: skip to the next possible token
            valid = False
            nxt = _TOKEN_START_RE.search(text, pos + 1)
            pos = nxt.start() if nxt else len(text)
    if n_groups == 0 or n_boxes == 0 or pending_delim:
        valid = False
    return Parsed(valid, findings, {c for c, _ in findings})


def parse_vqa(text: object) -> Parsed:
    """Parse a ``[vqa]`` answer into canonical global labels (``findings`` stays empty).

    Grammar: optional :data:`GLOBAL_PREFIX`, items separated by ``,`` / ``;`` / "and" / ``&``,
    optional final period. Each whole item must name a global label (case-insensitive; the
    aliases "Other diseases" and "No findings" are accepted); there is no substring search, so
    "no pneumonia" is an unknown item. Unknown items or no items make the answer invalid; the
    known items are still returned in ``labels``.
    """
    if not isinstance(text, str) or not text.strip():
        return Parsed(False)
    m = _GLOBAL_PREFIX_RE.match(text)
    body = text[m.end() :] if m else text
    body = body.strip().rstrip(".").strip()
    items = [i for i in re.split(r"\s*(?:[,;&]|\band\b)\s*", body, flags=re.IGNORECASE) if i]
    labels = {_GLOBAL_NAMES.get(_norm(i)) for i in items}
    valid = bool(items) and None not in labels
    labels.discard(None)
    return Parsed(valid, [], labels)  # type: ignore[arg-type]


def parse_refer(text: object) -> Parsed:
    """Parse a ``[refer]`` answer: boxes joined by ``<delim>``, ``findings = [("", box), ...]``.

    Valid when there is at least one box and nothing else but whitespace, delimiters and
    punctuation (``.,;``); the boxes are returned either way.
    """
    if not isinstance(text, str):
        return Parsed(False)
    findings = [("", b) for b in parse_boxes(text)]
    rest = DELIM_RE.sub(" ", BOX_RE.sub(" ", text))
    valid = bool(findings) and re.fullmatch(r"[\s.,;]*", rest) is not None
    return Parsed(valid, findings, set())
