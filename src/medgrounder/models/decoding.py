"""Greedy decoding that reads its own token probabilities, and optionally keeps to the task's
answer grammar (``model.constrained_decoding``, design section 7).

:class:`AnswerProcessor` is a transformers ``LogitsProcessor``. At every step it sees the raw
logits, before any mask. It records the log-probability of the token chosen at the step before,
taken from the full-vocabulary softmax, so a grammar's renormalisation never inflates a
confidence. With a grammar (:class:`~medgrounder.core.automaton.Automaton`) it also masks every
token whose text would leave the grammar. It keeps a valid ending within the budget: once the
remaining new tokens only just cover the shortest completion, it allows only the tokens that keep
that completion within reach. Each row walks the automaton on its own, so batching with left
padding and ``inputs_embeds`` changes nothing.

:func:`box_scores` turns an answer's tokens and their log-probabilities into its
``prediction_boxes``. The tokens are matched to the characters of each box through
:meth:`~medgrounder.tasks.base.Task.pairs`. Each box keeps its parts (``label_prob``: the
probability of the tokens that named its class and, for a later box of a group, of those that
wrote the ``<delim>`` before it; ``coord_probs``: those of the tokens that wrote its digits) and
one ``score``, combined by a rule of :data:`BOX_SCORES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from transformers import LogitsProcessor

from medgrounder.core.automaton import Automaton, State
from medgrounder.core.boxes import from_grid

__all__ = ["BOX_SCORES", "AnswerProcessor", "Decoded", "TokenTable", "box_scores", "token_table"]


def _geomean(ps: Sequence[float]) -> float:
    return math.exp(sum(math.log(max(p, 1e-300)) for p in ps) / len(ps)) if ps else 1.0


#: ``model.box_score``: a box's score from its parts (label probability, coordinate-digit probabilities)
BOX_SCORES: dict[str, Callable[[float, Sequence[float]], float]] = {
    "label_x_geomean": lambda label, coords: label * _geomean(coords),
    "label": lambda label, coords: label,
    "geomean": lambda label, coords: _geomean(coords),
    "label_x_min": lambda label, coords: label * min(coords, default=1.0),
}


class TokenTable:
    """Each token id's text as it reads inside an answer (SentencePiece's ``▁`` as a space, byte
    tokens as their character; None for special tokens and bytes of no ASCII character), and a
    character trie over them, so the tokens a grammar state allows come from one walk of the
    trie that follows the automaton and stops where it refuses."""

    def __init__(self, tokenizer):
        self.eos_token_id = tokenizer.eos_token_id
        n = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        # A token's text is what it adds after an anchor: decoding it alone would drop the space
        # SentencePiece writes before a word.
        anchor = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a"))[-1]
        head = tokenizer.decode([anchor])
        pieces = tokenizer.batch_decode([[anchor, i] for i in range(n)], clean_up_tokenization_spaces=False)
        self.text: list[str | None] = [None if i in special or not p.startswith(head) or "\ufffd" in p[len(head):]
                                       or not p[len(head):] else p[len(head):] for i, p in enumerate(pieces)]
        self.trie: dict = {}
        for i, t in enumerate(self.text):
            if t is not None:
                node = self.trie
                for ch in t:
                    node = node.setdefault(ch, {})
                node.setdefault(None, []).append(i)
        #: every printable ASCII character is a token of its own: what the budget guarantee needs
        self.single_chars = all(any(self.text[i] == c for i in self.trie.get(c, {}).get(None, ()))
                                for c in map(chr, range(32, 127)))

    def __len__(self) -> int:
        return len(self.text)

    def answer_text(self, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
        """The answer the tokens ``ids`` write (stripped, as the decoded prediction) and each
        token's character span in it."""
        spans, pos, parts = [], 0, []
        for i in ids:
            t = self.text[i] if 0 <= i < len(self.text) else None
            t = t or ""
            spans.append((pos, pos + len(t)))
            parts.append(t)
            pos += len(t)
        raw = "".join(parts)
        lead = len(raw) - len(raw.lstrip())
        return raw.strip(), [(a - lead, b - lead) for a, b in spans]


@lru_cache(maxsize=8)
def _tables(tokenizer) -> TokenTable:
    return TokenTable(tokenizer)


def token_table(tokenizer) -> TokenTable:
    """The (cached) :class:`TokenTable` of a tokenizer."""
    return _tables(tokenizer)


@dataclass
class _Allowed:
    """What a grammar state allows: token ids, the state each leads to, and the length of the
    shortest completion from there (EOS: -1)."""

    ids: torch.Tensor
    dist: torch.Tensor
    next: dict[int, State]
    longest: int = 0
    _within: dict[int, torch.Tensor] = field(default_factory=dict)

    def within(self, limit: int) -> torch.Tensor:
        """The ids whose shortest completion takes at most ``limit`` tokens (all of them if none
        does), cached per limit: near the budget's end every row asks for the same few."""
        if limit >= self.longest:
            return self.ids
        hit = self._within.get(limit)
        if hit is None:
            keep = self.dist <= limit
            hit = self._within[limit] = self.ids[keep] if bool(keep.any()) else self.ids
        return hit


class _GrammarIndex:
    """The tokens each state of ``automaton`` allows, computed once per state."""

    def __init__(self, automaton: Automaton, table: TokenTable):
        self.automaton, self.table = automaton, table
        self._cache: dict[State, _Allowed] = {}

    def allowed(self, state: State) -> _Allowed:
        hit = self._cache.get(state)
        if hit is None:
            hit = self._cache[state] = self._walk(state)
        return hit

    def _walk(self, state: State) -> _Allowed:
        a = self.automaton
        nxt: dict[int, State] = {}
        stack = [(self.table.trie, state)]
        while stack:
            node, s = stack.pop()
            for ch in a.next_chars(s):
                child = node.get(ch)
                if child is None:
                    continue
                s2 = a.step(s, ch)
                if s2 is None:
                    continue
                for tid in child.get(None, ()):
                    nxt[tid] = s2
                stack.append((child, s2))
        ids = sorted(nxt)
        dist = [len(a.closing(nxt[i])) for i in ids]
        if a.accepts(state):
            ids.append(self.table.eos_token_id)
            dist.append(-1)
        return _Allowed(torch.tensor(ids, dtype=torch.long), torch.tensor(dist, dtype=torch.long), nxt, max(dist, default=0))


@lru_cache(maxsize=32)
def _index(automaton: Automaton, table: TokenTable) -> _GrammarIndex:
    return _GrammarIndex(automaton, table)


@dataclass
class Decoded:
    """One generated answer: its token ids (up to and without ``</s>``), their log-probabilities
    under the raw logits, the probability of the grammar's no-answer node (None without one),
    whether it ended with ``</s>`` within the budget, and its decoded ``text``."""

    ids: list[int]
    logprobs: list[float]
    no_answer_prob: float | None = None
    ended: bool = False
    text: str = ""


class AnswerProcessor(LogitsProcessor):
    """Records each row's chosen tokens' raw log-probabilities and, with ``constrain``, keeps each
    row to ``automaton`` (see the module docstring).

    ``max_new_tokens``: the generation budget (the grammar's ending is kept within it);
    ``no_answer_node``: an automaton node whose probability each row reports: the mass, under the
    raw first-step distribution, of the first tokens that commit the answer to it. Call
    :meth:`finish` with the generated ids to read the results.
    """

    def __init__(self, table: TokenTable, batch_size: int, max_new_tokens: int,
                 automaton: Automaton | None = None, constrain: bool = False, no_answer_node: str | None = None):
        if constrain and automaton is None:
            raise ValueError("constrained decoding needs an answer grammar")
        self.table, self.max_new_tokens = table, max_new_tokens
        self.automaton = automaton
        self.index = _index(automaton, table) if automaton is not None else None
        self.constrain = constrain
        self.states: list[State | None] = [automaton.start if automaton else None] * batch_size
        self.done = [False] * batch_size
        self.ids: list[list[int]] = [[] for _ in range(batch_size)]
        self.logprobs: list[list[float]] = [[] for _ in range(batch_size)]
        self.no_answer: list[float | None] = [None] * batch_size
        self._no_answer_ids = None
        if no_answer_node is not None and automaton is not None:
            start = self.index.allowed(automaton.start)
            self._no_answer_ids = torch.tensor(
                [t for t, s in start.next.items() if automaton.committed_to(s, no_answer_node)], dtype=torch.long)
        self._prev: torch.Tensor | None = None  # [B, V] log-softmax of the last step
        self._eos = torch.tensor([table.eos_token_id])
        self._copies: dict[int, torch.Tensor] = {}

    def _take(self, chosen: torch.Tensor) -> None:
        """Book the tokens chosen at the last step (``chosen`` [B])."""
        lp = self._prev.gather(1, chosen[:, None].to(self._prev.device))[:, 0].tolist()
        for i, t in enumerate(chosen.tolist()):
            if self.done[i]:
                continue
            if t == self.table.eos_token_id:
                self.done[i] = True
                continue
            self.ids[i].append(t)
            self.logprobs[i].append(lp[i])
            if self.constrain:
                self.states[i] = self.index.allowed(self.states[i]).next.get(t) if self.states[i] else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] if self._prev is not None else 0
        if self._prev is not None:
            self._take(input_ids[:, -1])
        logp = scores.float().log_softmax(-1)
        if step == 0 and self._no_answer_ids is not None:
            mass = logp[:, self._no_answer_ids.to(logp.device)].exp().sum(-1).tolist()
            self.no_answer = [float(m) for m in mass]
        self._prev = logp
        if not self.constrain:
            return scores
        remaining = self.max_new_tokens - step  # tokens still to come, this one included
        # done rows (transformers pads them anyway) and rows out of the grammar may only end
        cols = [self._on(scores.device, self._eos if self.done[i] or state is None
                         else self.index.allowed(state).within(remaining - 2))
                for i, state in enumerate(self.states)]
        rows = torch.arange(len(cols), device=scores.device).repeat_interleave(
            torch.tensor([c.shape[0] for c in cols], device=scores.device))
        cols = torch.cat(cols)
        # a copy into a fresh -inf tensor: on a CPU several times faster than masked_fill at 32k
        out = torch.full_like(scores, float("-inf"))
        out[rows, cols] = scores[rows, cols]
        return out

    def _on(self, device: torch.device, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` on ``device``, copied once per generation. The index keeps them on the CPU,
        and alive, so their identity is a key."""
        if ids.device == device:
            return ids
        hit = self._copies.get(id(ids))
        if hit is None:
            hit = self._copies[id(ids)] = ids.to(device)
        return hit

    def finish(self, sequences: torch.Tensor) -> list[Decoded]:
        """The results, given ``generate``'s output ids [B, n] (new tokens only): books the last
        step's tokens."""
        if self._prev is not None and sequences.shape[1]:
            self._take(sequences[:, -1])
        return [Decoded(ids, lps, p, done)
                for ids, lps, p, done in zip(self.ids, self.logprobs, self.no_answer, self.done, strict=True)]


def _covering(spans: Sequence[tuple[int, int]], lo: int, hi: int) -> list[int]:
    """Indices of the tokens whose span overlaps the characters ``[lo, hi)``."""
    return [k for k, (a, b) in enumerate(spans) if a < hi and b > lo and b > a]


def box_scores(decoded: Decoded, table: TokenTable, pairs_of, width: float, height: float,
               rule: str = "label_x_geomean") -> list[dict]:
    """``prediction_boxes`` of one answer: for each pair of ``pairs_of(text)``
    (:meth:`~medgrounder.tasks.base.Task.pairs`), its label, its box in original pixels, its
    parts and its ``score`` by ``rule`` (:data:`BOX_SCORES`)."""
    combine = BOX_SCORES[rule]
    text, spans = table.answer_text(decoded.ids)
    lp = decoded.logprobs

    def prob(tokens) -> float:
        return math.exp(sum(lp[k] for k in tokens)) if tokens else 1.0

    out, prev = [], None
    for pair in pairs_of(text):
        a, b = pair.span
        digits = sorted({k for j in range(a, b) if text[j].isdigit() for k in _covering(spans, j, j + 1)})
        decided = set(_covering(spans, *pair.label_span)) if pair.label_span else set()
        if prev is not None and prev.label_span == pair.label_span:  # a later box of its group
            decided |= set(_covering(spans, prev.span[1], a)) - set(digits)
        coords = [math.exp(lp[k]) for k in digits]
        label_prob = prob(sorted(decided))
        out.append({"label": pair.label, "box": [round(v, 2) for v in from_grid(pair.box, width, height)],
                    "score": combine(label_prob, coords), "label_prob": label_prob, "coord_probs": coords})
        prev = pair
    return out
