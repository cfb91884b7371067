"""Detectors: one rule's forbidden language as a byte DFA, scanned incrementally.

A scan keeps one thread per live anchored state, each with the earliest raw offset where a
partial match in that state began. Threads in the same state have the same future, so keeping
the earliest start is enough to know the leftmost start of every match that can still happen:
that start is what hold-back holds from and what a rollback returns to. Work per byte is
O(live threads), never O(output length).

`PatternDetector` reads raw bytes. `PhraseDetector` reads the stream through the phrase
normalizer (`normalize.py`) under the rule's `Fold` and maps positions back to raw offsets.
A whole-word phrase ends with a word edge, which the end of the text supplies: `finish`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ingate.gate.automaton import ByteDFA, PatternError, SearchDFA, compile_regexes, search_dfa
from ingate.gate.checks import Check
from ingate.gate.normalize import MARK, MARK_B, SEP, WORD, Fold, feed, normalize_token, phrase_char

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
        if not n:
            return state, []
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

    def finish(self, state: Any, pos: int) -> tuple[Any, list[Match]]:
        """The text ends at raw offset `pos`: matches that needed what comes next (a word edge)."""
        return state, []

    def matches(self, data: bytes) -> list[Match]:
        """Every completed match in a standalone text, its end included: `ingate check --text`, tests."""
        st, ms = self.advance(self.initial(), data, 0)
        return ms + self.finish(st, len(data))[1]

    def first_match(self, data: bytes) -> Match | None:
        ms = self.matches(data)
        return min(ms, key=lambda m: (m[0], m[1])) if ms else None


@dataclass
class CheckedDetector(PatternDetector):
    """A pattern whose matches must also pass a checksum and stand whole (`checks.py`): threads
    are keyed by the DFA state and the check's state together, the product automaton, built as
    it is walked. A thread starts only after a byte that cannot touch the number, and a match
    is reported when the byte after it cannot either (or at `finish`). Masks are computed on
    `mask_dfa`, the pattern followed by an edge: a superset."""

    check: Check | None = None
    mask_dfa: ByteDFA | None = None

    @property
    def search(self) -> SearchDFA:
        if self._search is None:
            self._search = search_dfa(self.mask_dfa or self.dfa)
        return self._search

    def initial(self) -> Any:
        return ({}, False)

    def earliest(self, state: Any, raw_len: int) -> int | None:
        threads, _ = state
        return min(threads.values()) if threads else None

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        if not data:
            return state, []
        assert self.check is not None
        trans = self._trans
        check = self.check
        step, touches, c0 = check.step, check.touches, check.initial()
        t0 = trans[0]
        threads, after_touch = state
        matches: list[Match] = []
        for i, b in enumerate(data):
            p = pos + i
            touch = touches(b)
            if not touch:
                matches.extend(self._ends(threads, p))
            new: dict = {}
            for (s, cs), st in threads.items():
                ns = trans[s][b]
                if ns >= 0 and (ncs := step(cs, b)) is not None and (ns, ncs) not in new:
                    new[(ns, ncs)] = st
            if not after_touch:
                ns = t0[b]
                if ns >= 0 and (ncs := step(c0, b)) is not None and (ns, ncs) not in new:
                    new[(ns, ncs)] = p
            threads, after_touch = new, touch
        return (threads, after_touch), matches

    def _ends(self, threads: dict, p: int) -> list[Match]:
        assert self.check is not None
        acc, ok, accept = self._acc, self.check.accepts, self.dfa.accept
        return [(st, p, accept[s]) for (s, cs), st in threads.items() if acc[s] and ok(cs)]

    def finish(self, state: Any, pos: int) -> tuple[Any, list[Match]]:
        threads, _ = state
        return ({}, False), self._ends(threads, pos)


@dataclass
class PhraseDetector(PatternDetector):
    fold: Fold = field(default_factory=Fold)
    kind: str = "phrases"

    def initial(self) -> Any:
        if not self.fold.whole_word:
            return ({}, b"")
        threads, _ = self._scan({}, iter(((MARK_B[0], 0, 0),)))  # the text starts at a word edge
        return (threads, b"")

    def earliest(self, state: Any, raw_len: int) -> int | None:
        threads, pending = state
        first = min(threads.values()) if threads else None
        if pending:  # an unfinished character may begin a match: hold it too
            p = raw_len - len(pending)
            first = p if first is None else min(first, p)
        return first

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        threads, pending = state
        pending, pieces = feed(pending, data, pos, self.fold)
        if all(len(nb) == 1 for nb, _, _ in pieces):  # the common case: one byte per character
            stream = ((nb[0], st, end) for nb, st, end in pieces)
        else:
            stream = ((b, st, end) for nb, st, end in pieces for b in nb)
        threads, ms = self._scan(threads, stream)
        return (threads, pending), ms

    def finish(self, state: Any, pos: int) -> tuple[Any, list[Match]]:
        threads, _ = state
        if not self.fold.whole_word or not threads:
            return state, []
        threads, ms = self._scan(threads, iter(((MARK_B[0], pos, pos),)))
        return (threads, b""), ms

    def search_initial(self) -> Any:
        return (self.search.run(MARK_B) if self.fold.whole_word else 0, b"")

    def advance_search(self, sstate: Any, data: bytes) -> Any:
        u, pending = sstate
        pending, pieces = feed(pending, data, 0, self.fold)
        item = self.search.table.item
        for nb, _, _ in pieces:
            for b in nb:
                u = item(u, b)
        return (u, pending)

    def mask_view(self, sstate: Any) -> tuple[int, Any]:
        u, pending = sstate
        return u, (self.fold, pending)


def phrase_regex(phrase: str, fold: Fold) -> str:
    """The phrase as a regex over folded text; the stream's spaces and edges as the fold writes them."""
    items: list[tuple[int, list[str]]] = []  # (WORD | SEP, alternatives); whitespace is (SEP, [" "])
    space = (SEP, [" "])
    for ch in phrase:
        kind, alts = phrase_char(ch, fold)
        if kind == WORD:
            items.append((WORD, alts))
        elif kind == SEP and not fold.separators and alts:
            if alts == [" "] and items and items[-1] == space:
                continue  # a run of whitespace is one
            items.append((SEP, alts))
    while items and items[0] == space:
        items.pop(0)
    while items and items[-1] == space:
        items.pop()
    if not items:
        if fold.separators and any(phrase_char(c, fold)[0] == SEP for c in phrase):
            raise PatternError(f"phrase {phrase!r} has no letters or digits, and separators are ignored; "
                               "set separators: exact on the rule, or remove the phrase")
        raise PatternError(f"phrase {phrase!r} is empty once normalized (whitespace or invisible characters "
                           "only); remove it")
    ww = fold.whole_word
    gap = re.escape(MARK) + "*" if fold.separators and ww else ""

    def word(alts: list[str]) -> str:
        forms = [gap.join(re.escape(c) for c in a) for a in alts]
        return forms[0] if len(forms) == 1 else "(?:" + "|".join(forms) + ")"

    parts: list[str] = []
    for kind, alts in items:
        if kind == WORD:
            if parts and gap:
                parts.append(gap)
            parts.append(word(alts))
        elif alts == [" "]:
            parts.append(f"(?:{re.escape(MARK + ' ' + MARK)})+" if ww else " +")
        else:
            parts.append(re.escape(MARK + alts[0] + MARK) if ww else re.escape(alts[0]))
    rx = "".join(parts)
    if ww:
        rx = (re.escape(MARK) if items[0][0] == WORD else "") + rx + (re.escape(MARK) if items[-1][0] == WORD else "")
    return rx


def compile_phrase_detector(rule_id: str, action: str, phrases: list[str], fold: Fold,
                            placeholder: str) -> PhraseDetector:
    """Phrases become literal regexes over folded text (a space stands for any whitespace run)."""
    rx = [phrase_regex(p, fold) for p in phrases]
    return PhraseDetector(rule_id, action, compile_regexes(rx), list(phrases), [placeholder] * len(phrases),
                          fold=fold)


def normalized_vocab(token_bytes: list[bytes], fold: Fold, pending: bytes = b"") -> list[bytes]:
    """The vocabulary as the phrase automaton reads it after `pending` bytes of an unfinished character."""
    if not pending:
        return [normalize_token(t, fold) for t in token_bytes]
    return [b"".join(p[0] for p in feed(pending, t, 0, fold)[1]) for t in token_bytes]
