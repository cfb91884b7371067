"""The `entropy` rule kind: a per-token entropy bound, and response and session budgets.

    - id: unsure
      entropy: {max_token_entropy: 4.0, on_exceed: narrow, budget: 40, baseline: 1.0, session_budget: 400}
      action: stop              # end at the next sentence once a budget is spent
      message: "(I'm not sure enough to go on.)"

Everything of the kind is here: the schema (`Entropy`), the spec, the budget of one stream
(`EntropyBudget`) and the check. Each admitted token spends its excess entropy,
max(0, H - baseline) nats, from the response's budget and, through the session store, from the
session's. When either is spent, the rule's decision is audited at once and the response ends at
the next sentence boundary (or after `MAX_TAIL_TOKENS` more tokens without one), with
finish_reason content_filter and the rule's optional message. Rolled-back tokens give their
spending back: they are not in the response. The bound is enforced by the sampler (`narrow`: the
distribution is cut to its most probable tokens until its entropy is within the bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import Field, model_validator

from ingate.gate.decision import Action
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.policy.kinds import RuleKind, SpecContext
from ingate.policy.schema import Strict
from ingate.sentences import end_after


class Entropy(Strict):
    max_token_entropy: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)  # nats, per step
    on_exceed: Literal["narrow", "none"] = "none"
    budget: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)  # per response
    baseline: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    session_budget: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _meaningful(self) -> Entropy:
        if self.on_exceed == "narrow" and self.max_token_entropy is None:
            raise ValueError("on_exceed: narrow needs max_token_entropy (the bound to narrow to)")
        if self.max_token_entropy is None and self.budget is None and self.session_budget is None:
            raise ValueError("sets nothing; give max_token_entropy, budget or session_budget")
        return self


@dataclass(frozen=True)
class EntropySpec:
    max_token_entropy: float | None
    narrow: bool
    budget: float | None
    baseline: float
    session_budget: float | None
    message: str | None


@dataclass(frozen=True)
class EntropyRuleSpec:
    """A per-token entropy bound and response and session budgets."""

    id: str
    action: Literal["stop"] | None  # None: a bound only reported or narrowed to, no budget
    entropy: EntropySpec
    kind: Literal["entropy"] = field(default="entropy", init=False)

    @property
    def needs_session_state(self) -> bool:
        return self.entropy.session_budget is not None


class EntropyKind(RuleKind):
    name = "entropy"
    block = Entropy
    about = "(bounds and budgets)"
    actions = ("stop",)
    action_required = False
    options = {"message": (str | None, Field(default=None, min_length=1))}  # released after a budget stop
    max_per_policy = 1
    max_reason = "its bound and budgets apply to the whole response"

    def validate(self, rule: Any) -> None:
        e = rule.entropy
        if (e.budget is not None or e.session_budget is not None) and rule.action is None:
            raise ValueError("a budget needs action: stop (end the response at the next sentence boundary when "
                             "it is spent); field action is missing")
        if rule.action is not None and rule.action != "stop":
            raise ValueError(f"an entropy rule's action is stop (got {rule.action!r})")
        super().validate(rule)

    def spec(self, rule: Any, ctx: SpecContext) -> EntropyRuleSpec:
        en = rule.entropy
        return EntropyRuleSpec(rule.id, cast(Literal["stop"] | None, rule.action), EntropySpec(
            en.max_token_entropy, en.on_exceed == "narrow", en.budget, en.baseline, en.session_budget, rule.message))

    def checks(self, part: list[EntropyRuleSpec], options: Any) -> list[Check]:
        return [EntropyCheck(r.id, r.entropy, options.session_entropy) for r in part[:1]]

    def describe(self, spec: EntropyRuleSpec) -> str:
        e = spec.entropy
        parts = []
        if e.max_token_entropy is not None:
            parts.append(f"bound {e.max_token_entropy:g} nats/token" + (" (narrow)" if e.narrow else " (reported)"))
        if e.budget is not None:
            parts.append(f"response budget {e.budget:g}")
        if e.session_budget is not None:
            parts.append(f"session budget {e.session_budget:g}")
        parts.append(f"excess over baseline {e.baseline:g}")
        return (f"  - {spec.id}: entropy " + ", ".join(parts)
                + (f"; {spec.action} at the next sentence end when a budget is spent" if spec.action else ""))


KIND = EntropyKind()


MAX_TAIL_TOKENS = 48  # no sentence end this long after the budget was spent: end anyway


class EntropyBudget:
    """One stream's entropy account under the rule."""

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
