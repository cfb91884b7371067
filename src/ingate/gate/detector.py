"""Detectors: one rule's forbidden language as a byte DFA, scanned incrementally.

A scan keeps one thread per live anchored state, each with the earliest raw offset where a
partial match in that state began. Threads in the same state have the same future, so keeping
the earliest start is enough to know the leftmost start of every match that can still happen:
that start is what hold-back holds from and what a rollback returns to. Work per byte is
O(live threads), never O(output length).

`PatternDetector` reads raw bytes. `PhraseDetector` reads the stream through the phrase
normalizer (`normalize.py`) under the rule's `Fold` and maps positions back to raw offsets.
A whole-word match waits for the character after it, or for the end of the text: `finish`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast

from ingate.gate.automaton import ByteDFA, compile_regexes
from ingate.gate.checks import Check
from ingate.gate.normalize import NONE, SEP, WORD, Body, Fold, feed, first, fold_char, normalize_token, phrase_char
from ingate.gate.regex import PatternError
from ingate.gate.search import SearchDFA, search_dfa

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

    def mask_views(self, sstate: Any) -> list[tuple[int, Any]]:
        """(search state, vocabulary view) pairs whose rows make the mask (their union); the view
        names how token bytes are read."""
        return [(sstate, None)]

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

    def __post_init__(self) -> None:
        super().__post_init__()
        assert self.check is not None
        self._touch = bytes(self.check.touches(b) for b in range(256))
        starters = [b for b in range(256) if self._trans[0][b] >= 0]
        # where a thread can start: found by `re` in C, so a token with no digit costs one search
        self._starts = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in starters) + b"]") if starters \
            else None

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        if not data:
            return state, []
        assert self.check is not None
        threads, after_touch = state
        tt = self._touch
        i0 = 0
        if not threads:  # the common case: no number under way; skip to where one could start
            m = self._starts.search(data) if self._starts is not None else None
            if m is None:
                return ({}, bool(tt[data[-1]])), []
            i0 = m.start()
            if i0:
                after_touch = bool(tt[data[i0 - 1]])
        trans = self._trans
        check = self.check
        step, c0, same = check.step, check.initial(), check.stateless
        t0 = trans[0]
        matches: list[Match] = []
        for i in range(i0, len(data)):
            b = data[i]
            touch = tt[b]
            if threads:
                if not touch:  # the byte after a number: the numbers that end here are whole
                    matches += self._ends(threads, pos + i)
                new: dict = {}
                for (s, cs), st in threads.items():
                    ns = trans[s][b]
                    if ns >= 0 and (ncs := cs if same else step(cs, b)) is not None and (ns, ncs) not in new:
                        new[(ns, ncs)] = st
                threads = new
            if not after_touch:
                ns = t0[b]
                if ns >= 0 and (ncs := c0 if same else step(c0, b)) is not None and (ns, ncs) not in threads:
                    if not threads:
                        threads = {}  # never add to a dict the caller still holds (the gate's snapshots)
                    threads[(ns, ncs)] = pos + i
            after_touch = touch
        return (threads, bool(after_touch)), matches

    def _ends(self, threads: dict, p: int) -> list[Match]:
        assert self.check is not None
        acc, ok, accept = self._acc, self.check.accepts, self.dfa.accept
        return [(st, p, accept[s]) for (s, cs), st in threads.items() if acc[s] and ok(cs)]

    def finish(self, state: Any, pos: int) -> tuple[Any, list[Match]]:
        threads, _ = state
        return ({}, False), self._ends(threads, pos)


@dataclass
class PhraseDetector(PatternDetector):
    """Phrases read through the rule's fold. A character that reads two ways is followed both
    ways (a nondeterministic step). Whole words: a thread starts only at a word character that
    no word character precedes, and a match that ends on a word character waits for the next
    visible character (or the end of the text) to be no word character; until then it is held
    like any partial match. The automaton is the plain phrase automaton either way."""

    fold: Fold = field(default_factory=Fold)
    kind: str = "phrases"

    def initial(self) -> Any:
        # threads, pending bytes, last visible character was a word character, matches waiting for an edge
        return ({}, b"", False, ())

    def earliest(self, state: Any, raw_len: int) -> int | None:
        threads, pending, _, waiting = state
        starts = list(threads.values()) + [m[0] for m in waiting]
        if pending:  # an unfinished character may begin a match: hold it too
            starts.append(raw_len - len(pending))
        return min(starts) if starts else None

    def advance(self, state: Any, data: bytes, pos: int) -> tuple[Any, list[Match]]:
        threads, pending, after_word, waiting = state
        ww = self.fold.whole_word
        pending, pieces = feed(pending, data, pos, self.fold, edges=ww)
        if not ww and all(type(nb) is bytes and len(nb) == 1 for nb, _, _, _ in pieces):  # the common case
            stream = ((cast(bytes, nb)[0], st, end) for nb, st, end, _ in pieces)
            threads, found = self._scan(threads, stream)
            return (threads, pending, after_word, waiting), found
        ms: list[Match] = []
        for nb, st, end, kind in pieces:
            can_start = True
            if ww:
                if kind != NONE:
                    if waiting and kind == SEP:
                        ms += waiting  # the edge after a whole word
                    waiting = ()
                can_start = kind == SEP or (kind == WORD and not after_word)
                if kind != NONE:
                    after_word = kind == WORD
            threads, ends = self._char(threads, nb, st, end, can_start)
            if ww and kind != SEP:
                waiting = waiting + tuple(m for m in ends if m not in waiting)
            else:
                ms += ends
        return (threads, pending, after_word, waiting), ms

    def _char(self, threads: Threads, body: Body, st: int, end: int, can_start: bool
              ) -> tuple[Threads, list[Match]]:
        """One character's folded bytes; under whole words a match may only end at its last byte.
        Two readings: the union of the threads, each state keeping its earliest start."""
        if isinstance(body, bytes):
            return self._bytes(threads, body, st, end, can_start)
        merged: Threads = {}
        ms: list[Match] = []
        for r in body:
            th, found = self._bytes(threads, r, st, end, can_start)
            for s, start in th.items():
                if s not in merged or start < merged[s]:
                    merged[s] = start
            ms += [m for m in found if m not in ms]
        return merged, ms

    def _bytes(self, threads: Threads, data: bytes, st: int, end: int, can_start: bool
               ) -> tuple[Threads, list[Match]]:
        if not self.fold.whole_word:
            return self._scan(threads, ((b, st, end) for b in data))
        trans, acc, accept = self._trans, self._acc, self.dfa.accept
        t0 = trans[0]
        ms: list[Match] = []
        last = len(data) - 1
        for i, b in enumerate(data):
            new: Threads = {}
            for s, start in threads.items():
                ns = trans[s][b]
                if ns >= 0 and ns not in new:
                    new[ns] = start
            if can_start and i == 0:
                ns = t0[b]
                if ns >= 0 and ns not in new:
                    new[ns] = st
            if i == last:
                ms += [(start, end, accept[s]) for s, start in new.items() if acc[s]]
            threads = new
        return threads, ms

    def finish(self, state: Any, pos: int) -> tuple[Any, list[Match]]:
        _, _, _, waiting = state
        return self.initial(), list(waiting)

    def search_initial(self) -> Any:
        return (frozenset((0,)), b"")

    def advance_search(self, sstate: Any, data: bytes) -> Any:
        """The search states after `data`: a set, since held text that reads two ways ('I' as 'i'
        or 'l') is followed both ways, as `advance` does. Under whole words, masks ignore edges:
        a superset of the tokens admission refuses."""
        us, pending = sstate
        pending, pieces = feed(pending, data, 0, self.fold)
        item = self.search.table.item
        for nb, _, _, _ in pieces:
            nxt = set()
            for r in ((nb,) if isinstance(nb, bytes) else nb):
                for u in us:
                    for b in r:
                        u = item(u, b)
                    nxt.add(u)
            us = frozenset(nxt)
        return (us, pending)

    def mask_views(self, sstate: Any) -> list[tuple[int, Any]]:
        us, pending = sstate
        return [(u, (self.fold, pending)) for u in sorted(us)]


def phrase_regex(phrase: str, fold: Fold) -> str:
    """The phrase as a regex over folded text; a space stands for any run of whitespace."""
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
    parts: list[str] = []
    for _, alts in items:
        if alts == [" "]:
            parts.append(" +")
        elif len(alts) == 1:
            parts.append(re.escape(alts[0]))
        else:
            parts.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
    return "".join(parts)


def compile_phrase_detector(rule_id: str, action: str, phrases: list[str], fold: Fold,
                            placeholder: str) -> PhraseDetector:
    """Phrases become literal regexes over folded text (a space stands for any whitespace run)."""
    rx = [phrase_regex(p, fold) for p in phrases]
    return PhraseDetector(rule_id, action, compile_regexes(rx), list(phrases), [placeholder] * len(phrases),
                          fold=fold)


def normalized_vocab(token_bytes: list[bytes], fold: Fold, pending: bytes = b"") -> tuple[list[bytes], list[int]]:
    """The vocabulary as the phrase automaton reads it after `pending` bytes of an unfinished
    character: (rows, owner). A token whose characters read two ways has a row per combination of
    readings (at most 16; past four such characters the rest read their first way)."""
    rows: list[bytes] = []
    owner: list[int] = []
    two_way = bytes(b for b in range(128) if len(fold_char(chr(b), fold)[1]) > 1)  # 'I', usually
    for t, tok in enumerate(token_bytes):
        if not pending and tok.isascii() and not any(b in two_way for b in tok):  # the common case
            rows.append(normalize_token(tok, fold))
            owner.append(t)
            continue
        combos = [b""]
        n_two = 0
        for nb, _, _, _ in feed(pending, tok, 0, fold)[1]:
            if isinstance(nb, bytes) or n_two >= 4:
                combos = [c + first(nb) for c in combos]
            else:
                n_two += 1
                combos = [c + r for c in combos for r in nb]
        rows += combos
        owner += [t] * len(combos)
    return rows, owner
