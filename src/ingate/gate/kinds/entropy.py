"""The entropy budget as a check: each admitted token spends its excess entropy; once a budget is
spent the decision is audited at once, and the stream ends at the next sentence boundary."""

from __future__ import annotations

from ingate.gate.decision import Action
from ingate.gate.entropy import EntropyBudget
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.policy import EntropySpec


class EntropyCheck(Check):
    def __init__(self, rule_id: str, spec: EntropySpec, session_spent: float = 0.0):
        self.rule_id = rule_id
        self.budget = EntropyBudget(rule_id, spec, session_spent)

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        eb = self.budget
        spent = eb.spend(entropy)
        out = [Finding(Kind.NOTE, self.rule_id, p0, p0, spent, action=Action.ABSTAIN)] if spent else []
        if eb.exhausted and (cut := eb.boundary(data, len(s))) is not None:
            # already audited when the budget was spent: the stop itself adds no decision
            out.append(Finding(Kind.STOP, self.rule_id, p0 + cut, p0 + cut, "", epilogue=eb.spec.message or ""))
        return out or None

    def rollback(self, s: Stream, k: int) -> None:
        self.budget.truncate(k)  # rolled-back tokens give their spending back
