"""A validated policy: its rules, each its kind's spec, and the policy-wide settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class PolicyError(ValueError):
    """A policy that cannot be used. Every message names the file, the rule and the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class RuleSpec(Protocol):
    """One validated rule with its files read: what its kind compiles (`ingate.policy.kinds`).
    Each kind's spec is a frozen dataclass carrying only its own fields."""

    id: str
    kind: str  # the kind's name: the rule's key in the YAML (forbid, semantic, entropy, ...)
    action: Any


@dataclass(frozen=True)
class MaskSpec:
    """`mask_upstream`: which values leave for a model only as placeholders (ingate.masking), and
    what the answer's placeholders become for the client."""

    values: tuple[str, ...]  # built-in pattern names and forbid rule ids
    answer: str = "restore"  # restore | keep | redact
    vault: str = "request"  # request | session


@dataclass(frozen=True)
class Policy:
    name: str
    source: str  # file path, or "<builtin:default>", "<none>", "<string>"
    rules: tuple[Any, ...]  # RuleSpecs, in file order
    store_text: bool
    max_rollbacks: int
    digest: str = field(default="")
    escalate_after: int | None = None  # a session with this many violations is refused before generating
    refusal: str = ""
    on_store_error: str = "refuse"  # the session store cannot be reached: refuse (fail closed) or allow
    mask: MaskSpec | None = None  # mask_upstream: values replaced by placeholders before the model sees them

    @property
    def is_empty(self) -> bool:
        return not self.rules

    def rules_of(self, kind: str) -> tuple[Any, ...]:
        """The rules of one kind, in file order."""
        return tuple(r for r in self.rules if r.kind == kind)

    def rule_of(self, kind: str) -> Any | None:
        """The first rule of a kind (entropy: the policy's one)."""
        return next(iter(self.rules_of(kind)), None)

    @property
    def needs_session_state(self) -> bool:
        """Does governing a request need its session's state (escalation, a session budget)?"""
        return self.escalate_after is not None or any(getattr(r, "needs_session_state", False) for r in self.rules)


NONE_POLICY = Policy(name="none", source="<none>", rules=(), store_text=False, max_rollbacks=0, digest="none")
