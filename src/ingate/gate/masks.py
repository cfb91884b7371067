"""Token masks computed on bytes: which vocabulary tokens would complete a forbidden match.

A mask depends only on the detector's search-DFA state, so it is computed once per state and
cached for the life of the compiled policy (shared by every request on the same vocabulary).
Computing one walks every token's bytes through the search DFA in numpy, tokens sorted by
length so that step i touches only the tokens that are longer than i.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ingate.gate.detector import PatternDetector, normalized_vocab
from ingate.gate.normalize import Fold


class TokenTable:
    """The vocabulary as a byte matrix, laid out for vectorised DFA walks."""

    def __init__(self, token_bytes: list[bytes], owner: list[int] | None = None, size: int | None = None):
        """`owner[r]`: the token id of row r, when a token has several rows (its readings, see
        `view`); by default row r is token r. `size`: the vocabulary size (default: the rows)."""
        n_rows = len(token_bytes)
        self.size = n_rows if size is None else size
        lens = np.fromiter((len(b) for b in token_bytes), dtype=np.int64, count=n_rows)
        self.order = np.argsort(lens, kind="stable")
        # the token id of each sorted row
        self.row_token = self.order if owner is None else np.asarray(owner, dtype=np.int64)[self.order]
        self.rows = n_rows
        sorted_lens = lens[self.order]
        self.maxlen = int(sorted_lens[-1]) if n_rows else 0
        mat = np.zeros((n_rows, max(self.maxlen, 1)), dtype=np.uint8)
        for row, t in enumerate(self.order):
            b = token_bytes[t]
            if b:
                mat[row, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        # starts[i]: first sorted row whose token is longer than i
        self.starts = np.searchsorted(sorted_lens, np.arange(self.maxlen), side="right")
        # cols[i]: byte i of every token longer than i, contiguous, as int32 (ready to add to state*256)
        self.cols = [np.ascontiguousarray(mat[self.starts[i]:, i]).astype(np.int32) for i in range(self.maxlen)]
        self.token_bytes = token_bytes
        self._views: dict[tuple, TokenTable] = {}
        self._lock = threading.Lock()

    def view(self, fold: Fold, pending: bytes = b"") -> TokenTable:
        """The vocabulary as phrase automata read it (folded; after `pending` bytes of an
        unfinished character). Built once per vocabulary and fold, and shared by every policy."""
        key = (fold, pending)
        t = self._views.get(key)
        if t is None:
            rows, owner = normalized_vocab(self.token_bytes, fold, pending)
            t = TokenTable(rows, owner, size=self.size)
            with self._lock:
                self._views[key] = t
        return t

    def completes(self, table: np.ndarray, accepting: np.ndarray, state: int) -> np.ndarray:
        """bool per token id: walking the token from `state` passes through an accepting state."""
        flat = np.ascontiguousarray(table, dtype=np.int32).ravel()  # 1-D takes beat 2-D fancy indexing
        cur = np.full(self.rows, state, dtype=np.int32)
        hit = np.zeros(self.rows, dtype=bool)
        for i in range(self.maxlen):
            s = self.starts[i]
            nxt = flat.take(cur[s:] * 256 + self.cols[i])
            cur[s:] = nxt
            hit[s:] |= accepting.take(nxt)
        out = np.zeros(self.size, dtype=bool)
        out[self.row_token[hit]] = True  # a token with several readings: any of them
        return out


# Combined masks (several detectors' rows ORed, as token ids) kept per mask cache. Each detector's own
# rows stay cached per state, bounded by its automaton; the combinations of several detectors'
# states are not, so past this many the combined cache starts again.
MAX_COMBINED = 4096


class MaskCache:
    """Per-(detector, search state) forbidden-token rows for one vocabulary. Thread-safe.

    Phrase detectors read tokens folded (`normalize.py`), so they walk a folded view of the
    vocabulary (`TokenTable.view`), where a token holding a character that reads two ways has a
    row per reading; and their search state is a set when held text reads two ways: the row is
    the union.
    """

    def __init__(self, table: TokenTable, max_combined: int = MAX_COMBINED):
        self.table = table
        self._rows: dict[tuple, np.ndarray] = {}
        self._accepting: dict[int, np.ndarray] = {}
        self._combined: dict[tuple, np.ndarray] = {}
        self.max_combined = max_combined
        self.misses = 0  # combinations computed (a cold mask)
        self._lock = threading.Lock()

    def forbidden_ids(self, states: Sequence[tuple[int, PatternDetector, Any]]) -> np.ndarray:
        """Token ids (int64, sorted) that complete a match of any of these detectors from its search
        state: the one computation of a prevent mask, for the gate (`Gate.mask`) and for the vLLM
        plugin's rows alike. `states`: (row key, detector, search state) per detector. The union is
        cached per combination of states; each detector's row per state (`row`)."""
        key = tuple((i, s) for i, _, s in states)
        ids = self._combined.get(key)
        if ids is None:
            if len(states) == 1:
                i, d, s = states[0]
                ids = np.flatnonzero(self.row(i, d, s))
            else:
                m = np.zeros(self.table.size, dtype=bool)
                for i, d, s in states:
                    m |= self.row(i, d, s)
                ids = np.flatnonzero(m)
            with self._lock:
                if len(self._combined) >= self.max_combined:  # rebuilding one is an OR of cached rows
                    self._combined.clear()
                self._combined[key] = ids
                self.misses += 1
        return ids

    def row(self, det_index: int, det: PatternDetector, sstate) -> np.ndarray:
        views = det.mask_views(sstate)
        if len(views) == 1:
            return self._row(det_index, det, *views[0])
        return np.logical_or.reduce([self._row(det_index, det, u, v) for u, v in views])

    def _row(self, det_index: int, det: PatternDetector, state: int, view) -> np.ndarray:
        key = (det_index, state, view)
        row = self._rows.get(key)
        if row is None:
            sd = det.search
            acc = self._accepting.get(det_index)
            if acc is None:
                acc = np.fromiter((bool(a) for a in sd.accept), dtype=bool, count=len(sd.accept))
                self._accepting[det_index] = acc
            row = self._view(view).completes(sd.table, acc, state)
            with self._lock:
                self._rows[key] = row
        return row

    def _view(self, view) -> TokenTable:
        return self.table if view is None else self.table.view(*view)

    @property
    def cached_rows(self) -> int:
        return len(self._rows)
