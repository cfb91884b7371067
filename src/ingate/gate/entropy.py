"""Entropy bounds and budgets for one stream.

Each admitted token spends its excess entropy, max(0, H - baseline) nats, from the response's
budget and, through the session store, from the session's. When either is spent, the rule's
decision is audited at once and the response ends at the next sentence boundary (or after
`MAX_TAIL_TOKENS` more tokens without one), with finish_reason content_filter and the rule's
optional message. Rolled-back tokens give their spending back: they are not in the response.
"""

from __future__ import annotations

import math

from ingate.policy import EntropySpec
from ingate.sentences import end_after

MAX_TAIL_TOKENS = 48  # no sentence end this long after the budget was spent: end anyway


class EntropyBudget:
    def __init__(self, rule_id: str, spec: EntropySpec, session_spent: float = 0.0):
        self.rule_id = rule_id
        self.spec = spec
        self.session_spent = session_spent  # before this response
        self.cum: list[float] = []  # cumulative excess after each admitted token
        self.exhausted: str | None = None  # "response" or "session"
        self.exhausted_tok = 0
        self.exceeded = 0  # steps whose entropy was over max_token_entropy

    @property
    def spent(self) -> float:
        return self.cum[-1] if self.cum else 0.0

    def spend(self, h: float) -> str | None:
        """Account one admitted token; the decision's detail when this token spends a budget."""
        s = self.spec
        ex = max(0.0, h - s.baseline) if math.isfinite(h) else 0.0
        if s.max_token_entropy is not None and math.isfinite(h) and h > s.max_token_entropy:
            self.exceeded += 1
        self.cum.append(self.spent + ex)
        if self.exhausted is not None:
            return None
        n = len(self.cum)
        if s.budget is not None and self.spent >= s.budget:
            self.exhausted, self.exhausted_tok = "response", n - 1
            return (f"response entropy budget {s.budget:g} spent: {self.spent:.2f} nats over baseline "
                    f"{s.baseline:g} in {n} tokens; ending at the next sentence boundary")
        if s.session_budget is not None and self.session_spent + self.spent >= s.session_budget:
            self.exhausted, self.exhausted_tok = "session", n - 1
            return (f"session entropy budget {s.session_budget:g} spent: {self.session_spent + self.spent:.2f} "
                    f"nats over baseline {s.baseline:g}; ending at the next sentence boundary")
        return None

    def boundary(self, data: bytes, n_tokens: int) -> int | None:
        """Where in this token's bytes the response ends (after a sentence end), if it ends here."""
        end = end_after(data)
        if end is not None:
            return end
        if n_tokens - self.exhausted_tok >= MAX_TAIL_TOKENS:
            return len(data)
        return None

    def truncate(self, k: int) -> None:
        del self.cum[k:]
        self.exhausted_tok = min(self.exhausted_tok, k)

    def summary(self, entropies: list[float]) -> dict:
        vals = [h for h in entropies if math.isfinite(h)]
        return {"rule": self.rule_id, "mean": round(sum(vals) / len(vals), 4) if vals else None,
                "max": round(max(vals), 4) if vals else None, "excess": round(self.spent, 4),
                "budget": self.spec.budget, "session_spent": round(self.session_spent + self.spent, 4),
                "session_budget": self.spec.session_budget, "bound": self.spec.max_token_entropy,
                "exceeded_steps": self.exceeded, "exhausted": self.exhausted}
