"""What the client may see of one stream: the release point, the redactions in what is released,
the cap a stop sets, and the refusal said after it. The gate says how far every check has
decided; this moves the release point there and never back."""

from __future__ import annotations

from ingate.gate.decision import Action, Decision
from ingate.gate.kinds.base import Stream
from ingate.gate.redact import Redactions
from ingate.gate.scatter import base_label
from ingate.holdback import HoldBack
from ingate.patterns import BUILTIN_PATTERNS


class Release:
    def __init__(self) -> None:
        self.hold = HoldBack()
        self.redactions = Redactions()
        self.cap: int | None = None  # after a stop: nothing at or beyond this byte is ever released
        self.epilogue = ""  # a rule's refusal, said after the released text once the stream stopped
        self.held_max_chars = 0

    @property
    def released(self) -> int:
        return self.hold.released

    def stop(self, at: int, epilogue: str = "") -> None:
        self.cap = at if self.cap is None else min(self.cap, at)
        self.epilogue = self.epilogue or epilogue

    def boundary(self, decided: int) -> int:
        """Where release may go, given that every check has decided the bytes below `decided`."""
        b = decided if self.cap is None else min(decided, self.cap)
        return max(self.redactions.boundary(b), self.hold.released)  # released text is final

    def advance(self, s: Stream, decided: int, final: bool) -> tuple[str, list[Decision]]:
        """The newly releasable client text, and the redactions it holds as decisions: the caller
        audits them before the text is shown (invariant 5)."""
        b = self.boundary(decided)
        # a built-in pattern's name says no more than its placeholder does; a phrase would
        done = [Decision(sp.rule_id, Action.REDACT, s.token_at(sp.start), sp.start, bytes(s.raw[sp.start:sp.end]),
                         f"{sp.label} replaced by {sp.placeholder}",
                         f"redacted one {base_label(sp.label)}" if base_label(sp.label) in BUILTIN_PATTERNS else "")
                for sp in self.redactions.releasing(self.hold.released, b)]
        text = self.hold.release(s.raw, b, self.redactions.spans)
        self.redactions.released(self.hold.released)
        if final or self.cap is not None:
            text += self.hold.flush()
            if self.epilogue:
                shown = self.hold.text + text
                text += self.hold.append((" " if shown and not shown[-1].isspace() else "") + self.epilogue)
                self.epilogue = ""
        if len(s.raw) - self.hold.released > self.held_max_chars:  # bytes >= chars: cheap pre-check
            held = len(bytes(s.raw[self.hold.released:]).decode("utf-8", errors="ignore"))
            self.held_max_chars = max(self.held_max_chars, held)
        return text, done
