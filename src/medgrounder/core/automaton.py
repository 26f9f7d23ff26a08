"""A character-level automaton for an answer grammar (``model.constrained_decoding``, design
section 7): each task writes its grammar from four kinds of node, and constrained decoding walks it
one character at a time.

- :class:`Lit`: a fixed text (``{<``, ``><``, a prefix sentence).
- :class:`Pick`: one of several texts. Options are never prefixes of each other, so the text read
  so far names the option once it is complete. An option may carry a label index. Labels are then
  taken in increasing order, each at most once, as the tasks write them. An option marked
  ``needs_label`` (the separator before another label) is allowed only while a higher label remains.
  ``accept``: the answer may end here (``</s>``).
- :class:`Skip`: one optional character (the space a SentencePiece token puts before the
  answer's first word).
- :class:`Num`: an integer in ``[lo, hi]`` without leading zeros, where ``lo`` is 0 or one more
  than a stored coordinate (``x2 > x1``, ``y2 > y1``). It may store its value in ``x1`` or ``y1``.

A state is a plain tuple ``(node, progress, (label, x1, y1))``, hashable so callers can cache per
state. :meth:`Automaton.closing` is the shortest completion the greedy walk finds. Its length
bounds the single-character tokens still needed, which is how a decoder keeps a valid ending
within its budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["END", "Automaton", "Lit", "Num", "Option", "Pick", "Skip", "State", "box_nodes"]

#: the name of the accepting node every grammar ends on
END = "end"
_REG = {"x1": 1, "y1": 2}

State = tuple  # (node name, progress: int for Lit, str for Pick / Num, (label, x1, y1))


@dataclass(frozen=True)
class Lit:
    text: str
    next: str


@dataclass(frozen=True)
class Skip:
    char: str
    next: str


@dataclass(frozen=True)
class Option:
    text: str
    next: str
    label: int | None = None
    needs_label: bool = False


@dataclass(frozen=True)
class Pick:
    options: tuple[Option, ...] = ()
    accept: bool = False


@dataclass(frozen=True)
class Num:
    next: str
    hi: int = 100
    above: str | None = None  # "x1" | "y1": the value must exceed that stored coordinate
    store: str | None = None  # "x1" | "y1"


def box_nodes(name: str, next: str) -> dict[str, Lit | Num]:
    """The nodes of one box ``{<x1><y1><x2><y2>}`` on the 0-100 grid with ``x1 < x2`` and
    ``y1 < y2``, entered at ``name``, leaving to ``next``."""
    return {
        name: Lit("{<", f"{name}.x1"),
        f"{name}.x1": Num(f"{name}.a", hi=99, store="x1"),
        f"{name}.a": Lit("><", f"{name}.y1"),
        f"{name}.y1": Num(f"{name}.b", hi=99, store="y1"),
        f"{name}.b": Lit("><", f"{name}.x2"),
        f"{name}.x2": Num(f"{name}.c", above="x1"),
        f"{name}.c": Lit("><", f"{name}.y2"),
        f"{name}.y2": Num(f"{name}.d", above="y1"),
        f"{name}.d": Lit(">}", next),
    }


@lru_cache(maxsize=256)
def _prefixes(lo: int, hi: int) -> frozenset[str]:
    return frozenset(str(v)[:k] for v in range(lo, hi + 1) for k in range(1, len(str(v)) + 1))


class Automaton:
    """``nodes``: name -> node; the walk starts at ``start`` and accepts on a :class:`Pick` with
    ``accept`` (:data:`END` is added as the empty accepting pick)."""

    def __init__(self, nodes: dict[str, Lit | Pick | Num | Skip], start: str):
        self.nodes = {END: Pick(accept=True), **nodes}
        for name, node in self.nodes.items():
            targets = [o.next for o in node.options] if isinstance(node, Pick) else [node.next]
            missing = [t for t in targets if t not in self.nodes]
            if missing:
                raise ValueError(f"grammar node {name!r} leads to unknown node(s) {missing}")
            if isinstance(node, Pick):
                texts = [o.text for o in node.options]
                if any(a != b and b.startswith(a) for a in texts for b in texts) or "" in texts:
                    raise ValueError(f"grammar node {name!r}: an option is a prefix of another")
        self.max_label = max((o.label for n in self.nodes.values() if isinstance(n, Pick) for o in n.options
                              if o.label is not None), default=-1)
        self.start = self.enter(start, (-1, -1, -1))
        self._closing: dict[State, str] = {}

    def enter(self, name: str, regs: tuple) -> State:
        return (name, 0 if isinstance(self.nodes[name], Lit) else "", regs)

    def _options(self, node: Pick, regs: tuple, part: str = "") -> list[Option]:
        last = regs[0]
        return [o for o in node.options if o.text.startswith(part)
                and (o.label is None or o.label > last) and (not o.needs_label or last < self.max_label)]

    def _bounds(self, node: Num, regs: tuple) -> tuple[int, int]:
        return (regs[_REG[node.above]] + 1 if node.above else 0), node.hi

    def step(self, state: State, ch: str) -> State | None:
        """The state after reading ``ch``, or None when the grammar does not allow it."""
        name, part, regs = state
        node = self.nodes[name]
        if isinstance(node, Skip):
            return self.enter(node.next, regs) if ch == node.char else self.step(self.enter(node.next, regs), ch)
        if isinstance(node, Lit):
            if node.text[part] != ch:
                return None
            return self.enter(node.next, regs) if part + 1 == len(node.text) else (name, part + 1, regs)
        if isinstance(node, Pick):
            part += ch
            options = self._options(node, regs, part)
            if not options:
                return None
            done = next((o for o in options if o.text == part), None)
            if done is None:
                return (name, part, regs)
            if done.label is not None:
                regs = (done.label, *regs[1:])
            return self.enter(done.next, regs)
        lo, hi = self._bounds(node, regs)
        if ch.isdigit():
            return (name, part + ch, regs) if part + ch in _prefixes(lo, hi) else None
        if not self._complete(part, lo, hi):
            return None
        if node.store:
            regs = tuple(int(part) if i == _REG[node.store] else r for i, r in enumerate(regs))
        return self.step(self.enter(node.next, regs), ch)

    def next_chars(self, state: State) -> set[str]:
        """The characters :meth:`step` may accept in ``state`` (a superset is enough: the walk
        of a token trie follows these branches only)."""
        name, part, regs = state
        node = self.nodes[name]
        if isinstance(node, Skip):
            return {node.char} | self.next_chars(self.enter(node.next, regs))
        if isinstance(node, Lit):
            return {node.text[part]}
        if isinstance(node, Pick):
            return {o.text[len(part)] for o in self._options(node, regs, part)}
        lo, hi = self._bounds(node, regs)
        chars = {d for d in "0123456789" if part + d in _prefixes(lo, hi)}
        if self._complete(part, lo, hi):
            chars |= self.next_chars(self.enter(node.next, regs))
        return chars

    @staticmethod
    def _complete(part: str, lo: int, hi: int) -> bool:
        return part.isdigit() and str(int(part)) == part and lo <= int(part) <= hi

    def feed(self, state: State | None, text: str) -> State | None:
        for ch in text:
            if state is None:
                return None
            state = self.step(state, ch)
        return state

    def accepts(self, state: State) -> bool:
        """Whether the answer may end (``</s>``) in ``state``."""
        node = self.nodes[state[0]]
        if isinstance(node, Skip):
            return self.accepts(self.enter(node.next, state[2]))
        return isinstance(node, Pick) and node.accept and state[1] == ""

    def committed_to(self, state: State, name: str) -> bool:
        """Whether every completion from ``state`` goes through the node ``name`` next: the state is
        there, or it is inside a pick whose remaining options all lead there."""
        node = self.nodes[state[0]]
        if state[0] == name:
            return True
        if isinstance(node, Skip):
            return self.committed_to(self.enter(node.next, state[2]), name)
        return isinstance(node, Pick) and state[1] != "" and all(
            o.next == name for o in self._options(node, state[2], state[1]))

    def closing(self, state: State) -> str:
        """A shortest text (found greedily: the shortest option at each pick, the smallest number)
        that takes ``state`` to an accepting state; following its first character gives a state
        whose closing is the rest, so its length is a consistent distance."""
        if state in self._closing:
            return self._closing[state]
        out, s = [], state
        while not self.accepts(s):
            name, part, regs = s
            node = self.nodes[name]
            if isinstance(node, Skip):
                s = self.enter(node.next, regs)
            elif isinstance(node, Lit):
                out.append(node.text[part:])
                s = self.enter(node.next, regs)
            elif isinstance(node, Pick):
                option = min(self._options(node, regs, part), key=lambda o: len(o.text))
                out.append(option.text[len(part):])
                s = self.feed(s, option.text[len(part):])
            else:
                lo, hi = self._bounds(node, regs)
                if self._complete(part, lo, hi):
                    nxt = self.nodes[node.next]
                    first = nxt.text[0] if isinstance(nxt, Lit) else None
                    if first is None:
                        raise ValueError(f"grammar node {name!r}: a number must be followed by a fixed text")
                    s = self.step(s, first)
                    out.append(first)
                else:
                    value = min((v for v in range(lo, hi + 1) if str(v).startswith(part)), key=lambda v: len(str(v)))
                    out.append(str(value)[len(part):])
                    s = (name, str(value), regs)
        text = "".join(out)
        self._closing[state] = text
        return text
