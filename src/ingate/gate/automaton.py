"""Forbidden regexes compiled into DFAs over UTF-8 bytes.

The token-mask engine sees tokens as byte strings, so every automaton here reads bytes, not code
points (``regex.py`` says how characters become byte ranges, exactly as Python's ``re`` reads them).

Pipeline for regexes: ``re._parser`` tree -> Thompson NFA over byte ranges with labelled
accepts (``regex.py``) -> subset construction over byte equivalence classes -> pruning and Moore
minimisation (vectorised with numpy) -> 256-column rows.  Phrases come here too, as literal
regexes over normalized text (see ``normalize.py``).  The unanchored automaton that token masks
are computed on is built from the result by ``search.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ingate.gate.regex import NFA, PatternError, build_nfa

__all__ = ["DEAD", "ByteDFA", "compile_regexes"]

DEAD: int = -1

_MAX_DFA_STATES = 200_000


# --------------------------------------------------------------------------- result type


@dataclass(frozen=True)
class ByteDFA:
    """Anchored DFA over bytes. State 0 is the start state.

    ``live`` and ``byte_classes`` are derived data; the compilers pass them in, and they are
    recomputed from ``trans`` when a caller builds a ``ByteDFA`` by hand.
    """

    trans: list[list[int]]
    accept: list[frozenset[int]]
    live: list[bool] = field(default_factory=list, repr=False, compare=False)
    byte_classes: tuple[int, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.live:
            object.__setattr__(self, "live", _compute_live(self.trans, self.accept))
        if not self.byte_classes:
            object.__setattr__(self, "byte_classes", _column_classes(self.trans))

    def fullmatch(self, data: bytes) -> frozenset[int]:
        """Labels whose alternative matches all of ``data`` (empty set if none)."""
        state = 0
        trans = self.trans
        for b in data:
            state = trans[state][b]
            if state == DEAD:
                return frozenset()
        return self.accept[state]

    def can_continue(self, state: int) -> bool:
        """True if some non-empty continuation from ``state`` reaches an accepting state."""
        return state != DEAD and self.live[state]

    @property
    def n_states(self) -> int:
        return len(self.trans)


def _compute_live(trans: list[list[int]], accept: list[frozenset[int]]) -> list[bool]:
    """live[s]: a non-empty path from s reaches an accepting state (generic, for hand-built DFAs)."""
    coreach = _coreachable(trans, accept)
    return [any(t != DEAD and coreach[t] for t in set(row)) for row in trans]


def _coreachable(trans: list[list[int]], accept: list[frozenset[int]]) -> list[bool]:
    """coreach[s]: some path (maybe empty) from s reaches an accepting state."""
    n = len(trans)
    rev: list[list[int]] = [[] for _ in range(n)]
    for s, row in enumerate(trans):
        for t in set(row):
            if t != DEAD:
                rev[t].append(s)
    coreach = [bool(a) for a in accept]
    stack = [s for s in range(n) if coreach[s]]
    while stack:
        t = stack.pop()
        for s in rev[t]:
            if not coreach[s]:
                coreach[s] = True
                stack.append(s)
    return coreach


def _column_classes(trans: list[list[int]]) -> tuple[int, ...]:
    """Byte -> class id, where two bytes share a class iff every state moves the same on them."""
    if not trans:
        return (0,) * 256
    arr = np.asarray(trans, dtype=np.int64)
    _, inv = np.unique(arr.T, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    # renumber in order of first appearance so class ids are stable and small
    ids: dict[int, int] = {}
    return tuple(ids.setdefault(int(c), len(ids)) for c in inv)


# --------------------------------------------------------------------------- subset construction


class _DFATooBig(Exception):
    pass


def _closure(nfa: NFA, start: int, important: list[bool]) -> frozenset[int]:
    """Epsilon closure restricted to states that matter after closing (byte edges or accept)."""
    seen = {start}
    stack = [start]
    out = []
    eps = nfa.eps
    while stack:
        s = stack.pop()
        if important[s]:
            out.append(s)
        for t in eps[s]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return frozenset(out)


def _byte_partition(ranges: Iterable[tuple[int, int]]) -> list[int]:
    """Byte -> class id: the coarsest partition into intervals that no range boundary cuts."""
    cuts = {0, 256}
    for lo, hi in ranges:
        cuts.add(lo)
        cuts.add(hi + 1)
    classes = [0] * 256
    cid = -1
    for b in range(256):
        if b in cuts:
            cid += 1
        classes[b] = cid
    return classes


def _determinize(nfa: NFA, start: int) -> tuple[list[list[int]], list[frozenset[int]], list[int]]:
    """Subset construction over byte classes. Returns (class table, accept labels, byte classes)."""
    classes = _byte_partition((lo, hi) for es in nfa.edges for lo, hi, _ in es)
    n_cls = classes[-1] + 1
    label = nfa.label
    important = [bool(es) or (s in label) for s, es in enumerate(nfa.edges)]
    moves: list[list[tuple[int, int]]] = [
        [(c, t) for lo, hi, t in es for c in range(classes[lo], classes[hi] + 1)] for es in nfa.edges
    ]
    clos_cache: dict[int, frozenset[int]] = {}

    def clos(s: int) -> frozenset[int]:
        c = clos_cache.get(s)
        if c is None:
            c = clos_cache[s] = _closure(nfa, s, important)
        return c

    first = clos(start)
    index = {first: 0}
    sets = [first]
    table: list[list[int]] = []
    accept: list[frozenset[int]] = []
    i = 0
    while i < len(sets):
        cur = sets[i]
        i += 1
        buckets: dict[int, set[int]] = {}
        for s in cur:
            for c, t in moves[s]:
                b = buckets.get(c)
                if b is None:
                    buckets[c] = {t}
                else:
                    b.add(t)
        row = [DEAD] * n_cls
        for c, targets in buckets.items():
            nxt = frozenset().union(*[clos(t) for t in targets])
            j = index.get(nxt)
            if j is None:
                j = len(sets)
                if j >= _MAX_DFA_STATES:
                    raise _DFATooBig
                index[nxt] = j
                sets.append(nxt)
            row[c] = j
        table.append(row)
        accept.append(frozenset(label[s] for s in cur if s in label))
    return table, accept, classes


def _prune(table: list[list[int]], accept: list[frozenset[int]]) -> tuple[list[list[int]], list[frozenset[int]]]:
    """Drop states that are unreachable or cannot reach an accept; renumber with start = 0."""
    n = len(table)
    coreach = _coreachable(table, accept)
    n_cls = len(table[0]) if table else 0
    if not n or not coreach[0]:
        return [[DEAD] * n_cls], [frozenset()]
    new_id = {0: 0}
    order = [0]
    i = 0
    while i < len(order):
        s = order[i]
        i += 1
        for t in table[s]:
            if t != DEAD and coreach[t] and t not in new_id:
                new_id[t] = len(order)
                order.append(t)
    out = [[new_id.get(t, DEAD) if t != DEAD else DEAD for t in table[s]] for s in order]
    return out, [accept[s] for s in order]


def _minimize(table: list[list[int]], accept: list[frozenset[int]]) -> tuple[list[list[int]], list[frozenset[int]]]:
    """Moore partition refinement, vectorised with numpy (input must be pruned).

    Minimisation only shrinks the search DFA, so it is best effort: long counting chains
    (e.g. 'a{5000}') need one round per state, and past a work budget the input is returned
    unchanged (it is still correct, just not minimal).
    """
    n = len(table)
    if n <= 1:
        return table, accept
    arr = np.asarray(table, dtype=np.int64)
    arr[arr == DEAD] = n  # the implicit dead sink
    k = arr.shape[1]
    acc_ids: dict[frozenset[int], int] = {}
    block = np.array([acc_ids.setdefault(a, len(acc_ids)) for a in accept], dtype=np.int64)
    n_blocks = len(acc_ids)
    weights = np.random.default_rng(0x5EED).integers(1, 1 << 62, size=k + 1, dtype=np.int64) | 1
    max_rounds = min(256, max(32, 20_000_000 // (n * (k + 1))))
    for _ in range(max_rounds):
        ext = np.append(block, -1)
        sig = np.concatenate([block[:, None], ext[arr]], axis=1)
        inv = _row_ids(sig, weights)
        new_n = int(inv.max()) + 1
        block = inv
        if new_n == n_blocks:
            break
        n_blocks = new_n
    else:
        return table, accept
    if n_blocks == n:
        return table, accept
    rep: dict[int, int] = {}
    for s in range(n):
        rep.setdefault(int(block[s]), s)
    # renumber blocks in BFS order from the start block
    start_b = int(block[0])
    new_id = {start_b: 0}
    order = [start_b]
    i = 0
    out: list[list[int]] = []
    while i < len(order):
        b = order[i]
        i += 1
        row = []
        for t in table[rep[b]]:
            if t == DEAD:
                row.append(DEAD)
                continue
            tb = int(block[t])
            j = new_id.get(tb)
            if j is None:
                j = new_id[tb] = len(order)
                order.append(tb)
            row.append(j)
        out.append(row)
    return out, [accept[rep[b]] for b in order]


def _row_ids(sig: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Dense ids of the distinct rows of ``sig`` (hash rows, then check that no hash collided)."""
    h = sig @ weights  # wraps around in int64, which is fine for a hash
    order = np.argsort(h, kind="stable")
    hs = h[order]
    rows = sig[order]
    same_hash = hs[1:] == hs[:-1]
    if np.any(same_hash & np.any(rows[1:] != rows[:-1], axis=1)):  # pragma: no cover - 2**-60 odds
        _, inv = np.unique(sig, axis=0, return_inverse=True)
        return inv.reshape(-1)
    _, inv = np.unique(h, return_inverse=True)
    return inv.reshape(-1)


def _class_table_to_dfa(table: list[list[int]], accept: list[frozenset[int]], classes: list[int]) -> ByteDFA:
    # byte classes of the result: bytes whose class columns are identical
    col_ids: dict[tuple[int, ...], int] = {}
    cls_of_col = [col_ids.setdefault(col, len(col_ids)) for col in zip(*table, strict=True)]
    byte_classes = tuple(cls_of_col[classes[b]] for b in range(256))
    trans = [[row[c] for c in classes] for row in table]
    live = [any(t != DEAD for t in row) for row in table]
    return ByteDFA(trans=trans, accept=accept, live=live, byte_classes=byte_classes)


def compile_regexes(patterns: list[str], *, ignore_case: bool = False) -> ByteDFA:
    """Anchored DFA for the union of ``patterns``; label i = ``patterns[i]``.

    Python ``re`` syntax and character semantics.  Anchors, lookaround, backreferences,
    conditionals, possessive quantifiers and atomic groups are rejected, as are patterns that
    match the empty string (a forbidden pattern must forbid some output).
    """
    nfa, start = build_nfa(patterns, ignore_case=ignore_case)
    try:
        table, accept, classes = _determinize(nfa, start)
    except _DFATooBig:
        raise PatternError(
            f"regexes {patterns!r} are too complex: the DFA exceeds {_MAX_DFA_STATES} states; "
            "split them into several smaller sets"
        ) from None
    table, accept = _prune(table, accept)
    table, accept = _minimize(table, accept)
    return _class_table_to_dfa(table, accept, classes)
