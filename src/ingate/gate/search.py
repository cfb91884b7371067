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
    rows = _ClassRows(dfa)
    masks = _coset_masks(rows.dense, len(dfa.trans), rows.n_cls, dfa.accept)
    states = _SearchStates(masks, max_states, len(dfa.trans))
    class_table = _explore(rows, states)
    return _expand(class_table, states, dfa)


class _ClassRows:
    """The anchored DFA's rows with one column per byte class, read on first use."""

    def __init__(self, dfa: ByteDFA) -> None:
        classes = dfa.byte_classes
        self.n_cls = max(classes) + 1
        self._reps = _class_representatives(classes, self.n_cls)
        self._trans = dfa.trans
        self._dense: dict[int, list[int]] = {}
        self._sparse: dict[int, list[tuple[int, int]]] = {}

    def dense(self, q: int) -> list[int]:
        """Target per class (DEAD included)."""
        r = self._dense.get(q)
        if r is None:
            row = self._trans[q]
            r = self._dense[q] = [row[b] for b in self._reps]
        return r

    def sparse(self, q: int) -> list[tuple[int, int]]:
        """(class, target) for the classes on which ``q`` does not die."""
        r = self._sparse.get(q)
        if r is None:
            r = self._sparse[q] = [(c, t) for c, t in enumerate(self.dense(q)) if t != DEAD]
        return r


def _class_representatives(classes: tuple[int, ...], n_cls: int) -> list[int]:
    """The first byte of each byte class."""
    reps = [0] * n_cls
    seen_cls: set[int] = set()
    for b, c in enumerate(classes):
        if c not in seen_cls:
            seen_cls.add(c)
            reps[c] = b
    return reps


class _SearchStates:
    """Search states numbered as they are met: sets of anchored states, merged by signature.

    The signature is the OR of the members' co-set masks, or the set itself when there are no
    masks (the plain construction).  State 0 is the empty set.  Raises PatternError past
    ``max_states`` states or ``_MAX_MEMBER_TOTAL`` stored anchored states.
    """

    def __init__(self, masks: list[int] | None, max_states: int, n_anchored: int) -> None:
        empty: frozenset[int] = frozenset()
        self.members = [empty]
        self.index = {empty: 0}
        self._masks = masks
        self._by_sig: dict[object, int] = {0 if masks is not None else empty: 0}
        self._max_states = max_states
        self._n_anchored = n_anchored
        self._budget = _MAX_MEMBER_TOTAL

    def state_of(self, key: frozenset[int]) -> int:
        """The state of the set ``key``, numbering a new one if no state has its signature."""
        j = self.index.get(key)
        if j is None:
            self._budget -= len(key) + 1
            if self._budget < 0:
                raise self._too_complex(f"{_MAX_MEMBER_TOTAL} stored anchored states")
            sig = self._signature(key)
            j = self._by_sig.get(sig)
            if j is None:
                j = len(self.members)
                if j >= self._max_states:
                    raise self._too_complex(f"{self._max_states} states")
                self._by_sig[sig] = j
                self.members.append(key)
            self.index[key] = j
        return j

    def _signature(self, key: frozenset[int]) -> object:
        masks = self._masks
        if masks is None:
            return key
        m = 0
        for q in key:
            m |= masks[q]
        return m

    def _too_complex(self, what: str) -> PatternError:
        return PatternError(
            f"the forbidden patterns are too complex: the search automaton needs more than {what} "
            f"(anchored DFA has {self._n_anchored} states); split them into several smaller sets or simplify them"
        )


def _explore(rows: _ClassRows, states: _SearchStates) -> list[list[int]]:
    """Rows of the search DFA over byte classes, breadth first from the empty set.

    The anchored start state belongs to every set implicitly: from the empty set only it moves,
    and every other row starts as a copy of that row, recomputed where some member moves too.
    """
    empty: frozenset[int] = frozenset()
    state_of = states.state_of
    sparse_row = rows.sparse
    members = states.members
    start_row = rows.dense(0)
    base_row = [state_of(frozenset({t}) if t != DEAD else empty) for t in start_row]
    out_rows = [base_row]
    i = 1
    while i < len(members):
        cur = members[i]
        i += 1
        out = base_row.copy()
        for c, ts in _moves_by_class(cur, sparse_row).items():
            t0 = start_row[c]
            if t0 != DEAD:
                ts.add(t0)
            out[c] = state_of(frozenset(ts))
        out_rows.append(out)
    return out_rows


def _moves_by_class(cur: frozenset[int], sparse_row: Callable[[int], list[tuple[int, int]]]) -> dict[int, set[int]]:
    """Class -> the anchored states the members of ``cur`` move to on it (classes where none moves are left out)."""
    touched: dict[int, set[int]] = {}
    for q in cur:
        for c, t in sparse_row(q):
            ts = touched.get(c)
            if ts is None:
                touched[c] = {t}
            else:
                ts.add(t)
    return touched


def _expand(class_table: list[list[int]], states: _SearchStates, dfa: ByteDFA) -> SearchDFA:
    """The search DFA with 256 byte columns; a state accepts the labels of its members and the start's."""
    ctab = np.asarray(class_table, dtype=np.int32)
    table = np.ascontiguousarray(ctab[:, np.asarray(dfa.byte_classes, dtype=np.intp)])
    acc = dfa.accept
    base = acc[0]
    accept = [base.union(*[acc[q] for q in m]) for m in states.members]
    return SearchDFA(table=table, accept=accept, members=states.members, index=states.index)
