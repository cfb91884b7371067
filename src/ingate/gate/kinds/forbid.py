"""Forbidden language: one phrase or pattern detector (or the caller's stop sequences) on a stream.

Its state is the detector's threads; one snapshot per token makes a rollback exact. What it
finds follows the rule's action: `prevent` the earliest match, `redact` every match, `stop` (and a
stop sequence, `end`) the earliest."""

from __future__ import annotations

from typing import Any

import numpy as np

from ingate.gate.detector import Match, PatternDetector
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.gate.masks import MaskCache

_KIND = {"prevent": Kind.PREVENT, "stop": Kind.STOP, "end": Kind.END, "redact": Kind.REDACT}


class ForbidCheck(Check):
    early = True

    def __init__(self, d: PatternDetector, index: int):
        self.d, self.index = d, index  # index: the detector's row key in the policy's mask cache
        self.rule_id = d.rule_id
        self.kind = _KIND[d.action]
        self.state: Any = d.initial()
        self.snaps: list[Any] = []  # the state before each token

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        self.snaps.append(self.state)
        if not data:
            return None
        self.state, ms = self.d.advance(self.state, data, p0)
        return self._found(ms) if ms else None

    def hold(self, s: Stream, exact: bool) -> int | None:
        st = self.d.earliest(self.state, len(s.raw))
        if st is not None and self.d.rolls_back and not exact:
            st = s.tok_start[s.token_at(st)]  # a rollback takes back whole tokens: hold from one's start
        return st

    def rollback(self, s: Stream, k: int) -> None:
        if k < len(self.snaps):
            self.state = self.snaps[k]
            del self.snaps[k:]

    def finish(self, s: Stream) -> list[Finding]:
        _, ms = self.d.finish(self.state, len(s.raw))
        return self._found(ms) if ms else []

    # ---- masks and logprobs --------------------------------------------------------------
    def forbidden(self, s: Stream, masks: MaskCache) -> np.ndarray:
        """bool per token: True where sampling it would complete a match from here.

        Every live partial match began at or after the earliest live start, so the search DFA run
        over the text from there reaches the same live set as a run over all of it."""
        d = self.d
        start = d.earliest(self.state, len(s.raw))
        ss = d.search_initial() if start is None else d.advance_search(d.search_initial(), bytes(s.raw[start:]))
        return masks.row(self.index, d, ss)

    def reveals(self, k: int, data: bytes, pos: int) -> bool:
        """Would `data` at token k (raw offset `pos`) complete a match or leave one undecided?"""
        nt, ms = self.d.advance(self.snaps[k], data, pos)
        return bool(ms) or self.d.earliest(nt, pos + len(data)) is not None

    def _found(self, ms: list[Match]) -> list[Finding]:
        d = self.d
        if self.kind is Kind.REDACT:
            return [Finding(Kind.REDACT, d.rule_id, st, end, self.describe(labels),
                            placeholder=d.placeholders[min(labels)], label=d.labels[min(labels)])
                    for st, end, labels in ms]
        st, end, labels = min(ms, key=lambda m: m[0])
        return [Finding(self.kind, d.rule_id, st, end, self.describe(labels))]

    def describe(self, labels: frozenset[int]) -> str:
        names = [self.d.labels[i] for i in sorted(labels)]
        return ("phrase " if self.d.kind == "phrases" else "pattern ") + ", ".join(repr(n) for n in names[:3])
