"""Detectors: one rule's forbidden language as a byte DFA, scanned incrementally.

A scan keeps one thread per live anchored state, each with the earliest raw offset where a
partial match in that state began. Threads in the same state have the same future, so keeping
the earliest start is enough to know the leftmost start of every match that can still happen:
that start is what hold-back holds from and what a rollback returns to. Work per byte is
O(live threads), never O(output length).

`PatternDetector` reads raw bytes. `PhraseDetector` reads the stream through the phrase
normalizer (`normalize.py`) and maps positions back to raw offsets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ingate.gate.automaton import ByteDFA, PatternError, SearchDFA, compile_regexes, search_dfa
from ingate.gate.normalize import feed, norm_text, normalize_token

Threads = dict[int, int]  # anchored state -> earliest start (raw offset); insertion order = start order
Match = tuple[int, int, frozenset[int]]  # raw start, raw end (exclusive), labels


@dataclass
class PatternDetector:
    rule_id: str
    action: str  # prevent | redact | stop
    dfa: ByteDFA
    labels: list[str]  # label index -> what matched (phrase, or pattern name)
    placeholders: list[str]  # label index -> redaction placeholder
    kind: str = "patterns"
    _search: SearchDFA | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._trans = self.dfa.trans
        self._acc = [bool(a) for a in self.dfa.accept]

    @property
    def rolls_back(self) -> bool:
        """Prevent rules may roll the engine back to a token boundary, so their holds are token-aligned."""
        return self.action == "prevent"

    @property
    def search(self) -> SearchDFA:
        """The unanchored DFA that token masks are computed on (built on first use)."""
        if self._search is None:
            self._search = search_dfa(self.dfa)
        return self._search

    # ---- per-stream state: opaque to the gate --------------------------------------------
    def initial(self) -> Any:
        return {}

    def earliest(self, state: Any, raw_len: int) -> int | None:
        """Raw offset of the earliest undecided partial match, or None (`raw_len`: bytes scanned)."""
        return min(state.values()) if state else None

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        """Feed `data` (which starts at raw offset `pos`); return the new state and completed matches."""
        n = len(data)
        return self._scan(state, zip(data, range(pos, pos + n), range(pos + 1, pos + n + 1), strict=True))

    def _scan(self, threads: Threads, stream) -> tuple[Threads, list[Match]]:
        trans, acc = self._trans, self._acc
        t0 = trans[0]
        matches: list[Match] = []
        for b, start, end in stream:
            new: Threads = {}
            for s, st in threads.items():
                ns = trans[s][b]
                if ns >= 0 and ns not in new:
                    new[ns] = st
            ns = t0[b]
            if ns >= 0 and ns not in new:
                new[ns] = start
            for s, st in new.items():
                if acc[s]:
                    matches.append((st, end, self.dfa.accept[s]))
            threads = new
        return threads, matches

    # ---- masks -----------------------------------------------------------------------------
    def search_initial(self) -> Any:
        return 0

    def advance_search(self, sstate: Any, data: bytes) -> Any:
        item = self.search.table.item
        for b in data:
            sstate = item(sstate, b)
        return sstate

    def mask_view(self, sstate: Any) -> tuple[int, Any]:
        """(search state, vocabulary view): the view names how token bytes are read."""
        return sstate, None

    def first_match(self, data: bytes) -> Match | None:
        """The first completed match in a standalone text: for `ingate check --text` and tests."""
        _, ms = self.advance(self.initial(), data, 0)
        return ms[0] if ms else None


@dataclass
class PhraseDetector(PatternDetector):
    case_sensitive: bool = False
    kind: str = "phrases"

    @property
    def casefold(self) -> bool:
        return not self.case_sensitive

    def initial(self) -> Any:
        return ({}, b"")

    def earliest(self, state: Any, raw_len: int) -> int | None:
        threads, pending = state
        first = min(threads.values()) if threads else None
        if pending:  # an unfinished character may begin a match: hold it too
            p = raw_len - len(pending)
            first = p if first is None else min(first, p)
        return first

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        threads, pending = state
        pending, pieces = feed(pending, data, pos, self.casefold)
        if all(len(nb) == 1 for nb, _, _ in pieces):  # the common case: one byte per character
            stream = ((nb[0], st, end) for nb, st, end in pieces)
        else:
            stream = ((b, st, end) for nb, st, end in pieces for b in nb)
        threads, ms = self._scan(threads, stream)
        return (threads, pending), ms

    def search_initial(self) -> Any:
        return (0, b"")

    def advance_search(self, sstate: Any, data: bytes) -> Any:
        u, pending = sstate
        pending, pieces = feed(pending, data, 0, self.casefold)
        item = self.search.table.item
        for nb, _, _ in pieces:
            for b in nb:
                u = item(u, b)
        return (u, pending)

    def mask_view(self, sstate: Any) -> tuple[int, Any]:
        u, pending = sstate
        return u, (self.casefold, pending)


def compile_phrase_detector(rule_id: str, action: str, phrases: list[str], case_sensitive: bool,
                            placeholder: str) -> PhraseDetector:
    """Phrases become literal regexes over normalized text; a space stands for any whitespace run."""
    casefold = not case_sensitive
    rx = []
    for p in phrases:
        n = norm_text(p, casefold)
        if not n:
            raise PatternError(f"phrase {p!r} is empty once normalized (whitespace only); remove it")
        rx.append(" +".join(re.escape(w) for w in n.split(" ")))
    return PhraseDetector(rule_id, action, compile_regexes(rx), list(phrases), [placeholder] * len(phrases),
                          case_sensitive=case_sensitive)


def normalized_vocab(token_bytes: list[bytes], casefold: bool, pending: bytes = b"") -> list[bytes]:
    """The vocabulary as the phrase automaton reads it after `pending` bytes of an unfinished character."""
    if not pending:
        return [normalize_token(t, casefold) for t in token_bytes]
    return [b"".join(p[0] for p in feed(pending, t, 0, casefold)[1]) for t in token_bytes]
