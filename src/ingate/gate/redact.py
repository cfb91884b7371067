"""Redaction spans of one stream: found, merged, released as placeholders, taken back on rollback."""

from __future__ import annotations

from ingate.gate.kinds.base import Finding
from ingate.gate.scatter import regrouped
from ingate.holdback import Span


class Redactions:
    def __init__(self) -> None:
        self.spans: list[Span] = []  # not yet released whole, by start
        self.redacted: list[Span] = []  # every span released as a placeholder, in order
        self._log: list[tuple[int, list[Span]]] = []  # (token index, spans before it changed them)

    def add(self, k: int, f: Finding) -> None:
        """A redact match found when token k joined the stream (a rollback to k or before undoes it).
        Overlapping spans merge; a pattern's own reading names the merged span before a regrouped
        one (ingate.gate.scatter), then the longer match does (a card number also holds a
        phone-shaped run: it should read [CREDIT_CARD])."""
        self._log.append((k, self.spans))
        new = Span(f.start, f.end, f.placeholder, f.rule_id, f.label)
        keep: list[Span] = []
        for sp in self.spans:
            if sp.end > new.start and sp.start < new.end:
                first = max((sp, new), key=lambda x: (not regrouped(x.label), x.end - x.start, -x.start))
                new = Span(min(sp.start, new.start), max(sp.end, new.end), first.placeholder,
                           first.rule_id, first.label)
            else:
                keep.append(sp)
        keep.append(new)
        keep.sort(key=lambda x: x.start)
        self.spans = keep

    def rollback(self, k: int) -> None:
        """Back to the spans as they were before token k."""
        while self._log and self._log[-1][0] >= k:
            _, self.spans = self._log.pop()

    def boundary(self, b: int) -> int:
        """`b`, moved back so that no span straddles it."""
        for sp in self.spans:
            if sp.start < b < sp.end:
                b = sp.start
        return b

    def releasing(self, released: int, b: int) -> list[Span]:
        """Spans that release moving from `released` to `b` completes: recorded as redacted."""
        out = [sp for sp in self.spans if released < sp.end <= b]
        self.redacted.extend(out)
        return out

    def released(self, upto: int) -> None:
        """Released spans are final (a rollback never reaches below the release point): dropping
        them keeps per-token work independent of how much was redacted before."""
        if self.spans and self.spans[0].end <= upto:
            self.spans = [sp for sp in self.spans if sp.end > upto]
        # (a span that a rollback restores from the log after its release ends at or below the
        # release point: `boundary` and `releasing` pass over it, and the next release drops it)
