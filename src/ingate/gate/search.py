"""The unanchored search DFA that token masks are computed on, built from an anchored ``ByteDFA``.

``search_dfa`` builds the minimal automaton for Σ*·(union) directly: a subset construction whose
subsets are keyed by the co-sets they hit, so subsets with the same future merge on the fly.  This
keeps counting patterns such as IBANs at hundreds of states instead of ~10^5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ingate.gate.automaton import DEAD, ByteDFA
from ingate.gate.regex import PatternError

__all__ = ["SearchDFA", "search_dfa"]

@dataclass(frozen=True)
class SearchDFA:
    """Unanchored (search) DFA for Σ*·(union).

    A state is the set of live anchored states reached by the suffixes of the text read so far
    (the anchored start state is always implicitly included).  Sets with the same future are
    merged, so the automaton is minimal: ``members[i]`` is one representative set, and
    ``index`` maps every set met while building to its state.  The mask engine walks every
    vocabulary token's bytes from one search state, so ``table`` is dense and never DEAD.
    """

    table: np.ndarray
    accept: list[frozenset[int]]
    members: list[frozenset[int]]
    index: dict[frozenset[int], int]

    @property
    def n_states(self) -> int:
        return len(self.members)

    def run(self, data: bytes, state: int = 0) -> int:
        """Search state after reading ``data`` from ``state``."""
        table = self.table
        for b in data:
            state = int(table[state, b])
        return state


_MAX_COSETS = 50_000
_MAX_MEMBER_TOTAL = 5_000_000  # total size of the stored subsets, to bound memory
_MAX_COSET_ANCHORED = 30_000


def _coset_masks(
    crow: Callable[[int], list[int]], n: int, n_cls: int, accept: list[frozenset[int]]
) -> list[int] | None:
    """Per anchored state, a bitmask over the "co-sets" that contain it (None if too many).

    A co-set Y(v, i) is the set of anchored states from which the word v completes label i.
    Two search subsets S, S' have the same future iff they hit the same co-sets, so the OR of
    the masks over S is a canonical key for the minimal search DFA (Brzozowski's argument),
    computed without building the unminimised subset automaton first.  Co-sets holding the
    start state are skipped: the start is in every search state, so they never distinguish.
    """
    if n > _MAX_COSET_ANCHORED:
        return None
    incoming: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for q in range(n):
        for c, t in enumerate(crow(q)):
            if t != DEAD:
                incoming[t].append((c, q))
    labels = sorted(set().union(*accept))
    seen: dict[frozenset[int], int] = {}
    queue: list[frozenset[int]] = []
    for lab in labels:
        y = frozenset(q for q in range(n) if lab in accept[q])
        if 0 not in y and y not in seen:
            seen[y] = len(queue)
            queue.append(y)
    i = 0
    while i < len(queue):
        y = queue[i]
        i += 1
        preds: dict[int, set[int]] = {}
        for t in y:
            for c, q in incoming[t]:
                ps = preds.get(c)
                if ps is None:
                    preds[c] = {q}
                else:
                    ps.add(q)
        for ps in preds.values():
            if 0 in ps:
                continue
            fp = frozenset(ps)
            if fp not in seen:
                if len(queue) >= _MAX_COSETS:
                    return None
                seen[fp] = len(queue)
                queue.append(fp)
    masks = [0] * n
    for j, y in enumerate(queue):
        bit = 1 << j
        for q in y:
            masks[q] |= bit
    return masks


def search_dfa(dfa: ByteDFA, max_states: int = 50_000) -> SearchDFA:
    """Minimal DFA for Σ*·L(dfa) (with labels), built as a subset construction.

    Each search state keeps one representative set of anchored states (``members``); subsets
    with the same future are merged on the fly using co-set signatures (see ``_coset_masks``),
    so e.g. all the overlapping partial IBANs that end up equivalent share one state.  ``index``
    maps every subset met during the construction to its state.  Falls back to the plain
    (unmerged) construction when the anchored DFA is very large.  Works on byte classes and
    expands to 256 columns at the end.  PatternError when more than ``max_states`` are needed.
    """
    classes = dfa.byte_classes
    n_cls = max(classes) + 1
    reps = [0] * n_cls
    seen_cls: set[int] = set()
    for b, c in enumerate(classes):
        if c not in seen_cls:
            seen_cls.add(c)
            reps[c] = b
    trans = dfa.trans
    crow_cache: dict[int, list[int]] = {}

    def crow(q: int) -> list[int]:
        r = crow_cache.get(q)
        if r is None:
            row = trans[q]
            r = crow_cache[q] = [row[b] for b in reps]
        return r

    masks = _coset_masks(crow, len(trans), n_cls, dfa.accept)
    sparse_cache: dict[int, list[tuple[int, int]]] = {}

    def sparse_row(q: int) -> list[tuple[int, int]]:
        r = sparse_cache.get(q)
        if r is None:
            r = sparse_cache[q] = [(c, t) for c, t in enumerate(crow(q)) if t != DEAD]
        return r

    start_row = crow(0)
    empty: frozenset[int] = frozenset()
    members = [empty]
    index = {empty: 0}
    by_sig: dict[object, int] = {0 if masks is not None else empty: 0}
    rows: list[list[int]] = []

    budget = [_MAX_MEMBER_TOTAL]

    def too_complex(what: str) -> PatternError:
        return PatternError(
            f"the forbidden patterns are too complex: the search automaton needs more than {what} "
            f"(anchored DFA has {len(trans)} states); split them into several smaller sets or simplify them"
        )

    def state_of(key: frozenset[int]) -> int:
        j = index.get(key)
        if j is None:
            budget[0] -= len(key) + 1
            if budget[0] < 0:
                raise too_complex(f"{_MAX_MEMBER_TOTAL} stored anchored states")
            if masks is None:
                sig: object = key
            else:
                m = 0
                for q in key:
                    m |= masks[q]
                sig = m
            j = by_sig.get(sig)
            if j is None:
                j = len(members)
                if j >= max_states:
                    raise too_complex(f"{max_states} states")
                by_sig[sig] = j
                members.append(key)
            index[key] = j
        return j

    # from the empty set only the implicit start moves; every other row starts as a copy of it
    base_row = [state_of(frozenset({t}) if t != DEAD else empty) for t in start_row]
    rows.append(base_row)
    i = 1
    while i < len(members):
        cur = members[i]
        i += 1
        touched: dict[int, set[int]] = {}
        for q in cur:
            for c, t in sparse_row(q):
                ts = touched.get(c)
                if ts is None:
                    touched[c] = {t}
                else:
                    ts.add(t)
        out = base_row.copy()
        for c, ts in touched.items():
            t0 = start_row[c]
            if t0 != DEAD:
                ts.add(t0)
            out[c] = state_of(frozenset(ts))
        rows.append(out)
    ctab = np.asarray(rows, dtype=np.int32)
    table = np.ascontiguousarray(ctab[:, np.asarray(classes, dtype=np.intp)])
    acc = dfa.accept
    base = acc[0]
    accept = [base.union(*[acc[q] for q in m]) for m in members]
    return SearchDFA(table=table, accept=accept, members=members, index=index)
