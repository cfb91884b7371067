"""Refusing a request before generation: three checks, one step.

A request can be turned away before its first token by escalation (its session has too many
violations), by a spent session entropy budget, or by input screening (a semantic rule with
`apply_to: [input]` rejects the prompt). Each check answers a `Refusal` or None; `refuse` is the
one way a refusal becomes a response: `Result.refused` (finish_reason content_filter, no
completion tokens), audited (the decision, then the request record) before its text is released.

The server asks about escalation before queueing (it keeps the sessions); the runtime asks about
the budget and the screen once the prompt is tokenized. Both refuse through `refuse`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ingate.drivers.base import Result
from ingate.gate.compile import CompiledPolicy
from ingate.gate.decision import Action, Decision
from ingate.policy import Policy
from ingate.store.audit import AuditLog

DEFAULT_REFUSAL = "I can't help with that."


@dataclass(frozen=True)
class Refusal:
    """What a check decided: the audited decision, the text the client is told, and the entropy
    account when the refusal is the entropy rule's."""

    decision: Decision
    text: str
    entropy_summary: dict | None = None


def escalation(policy: Policy, violations: int) -> Refusal | None:
    """A session with `escalate_after` violations or more gets the policy's refusal."""
    if policy.escalate_after is None or violations < policy.escalate_after:
        return None
    d = Decision("session", Action.REFUSE, 0, 0, b"",
                 f"session has {violations} violations (escalate_after: {policy.escalate_after}); refused")
    return Refusal(d, policy.refusal)


def session_budget(policy: Policy, spent: float) -> Refusal | None:
    """A session that has spent its entropy budget gets the rule's message and no generation."""
    rule = policy.rule_of("entropy")
    if rule is None or rule.entropy.session_budget is None:
        return None
    budget = rule.entropy.session_budget
    if spent < budget:
        return None
    d = Decision(rule.id, Action.ABSTAIN, 0, 0, b"",
                 f"session entropy budget {budget:g} spent before this request ({spent:.2f} nats); not generating")
    return Refusal(d, (rule.entropy.message or "").strip(),
                   {"rule": rule.id, "excess": 0.0, "session_spent": round(spent, 4), "session_budget": budget,
                    "exhausted": "session"})


def screen_input(compiled: CompiledPolicy, messages: list[dict[str, str]] | str) -> Refusal | None:
    """Semantic rules with `apply_to: [input]` judge the last user message before generating."""
    if not compiled.semantic_input:
        return None
    from ingate.semantic import scorer

    if isinstance(messages, str):
        text = messages
    else:
        text = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    verdict = scorer.screen(compiled.semantic_input, text)
    bad = verdict.rejected if verdict is not None else None
    if bad is None:
        return None
    rule = next(r for r in compiled.semantic_input if r.rule_id == bad.rule_id)
    d = Decision(rule.rule_id, Action.REFUSE, 0, 0, text.encode("utf-8"),
                 f"semantic input check: prompt {rule.explain(bad)}; refused before generating")
    return Refusal(d, rule.spec.refusal or DEFAULT_REFUSAL)


def refuse(refusal: Refusal, policy: Policy, request_id: str, audit: AuditLog | None, session: str | None = None,
           prompt_tokens: int = 0, elapsed_s: float = 0.0, on_text: Callable[[str], None] | None = None,
           on_audited: Callable[[list[Decision]], None] | None = None, key_id: str | None = None) -> Result:
    """The refused request's result, audited before its text goes to `on_text`. `on_audited` is
    told of the decision once it is durable, as the governed loop tells of its own."""
    res = Result.refused(refusal.text, refusal.decision, prompt_tokens, elapsed_s,
                         entropy_summary=refusal.entropy_summary)
    if audit is not None:
        audit.record(request_id, policy.name, res.decisions, policy.store_text)
        audit.record_request(request_id, policy.name, res, session, key_id)
    if on_audited is not None:
        on_audited(res.decisions)
    if on_text is not None and res.text:
        on_text(res.text)
    return res
