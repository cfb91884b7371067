"""What a policy file may say: the YAML schema, validated with messages that say what to fix.

The policy-wide part (version, name, audit, session, max_rollbacks) is here; a rule's part is
built from the registered kinds (`ingate.policy.kinds`): each adds its block (`forbid:`, ...) and
its rule-level options, and validates its own rules. `ingate.policy.load` reads a file against it;
this module only decides what is allowed and why not.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from ingate.policy import kinds as registry


class Strict(BaseModel):
    """Every model of a policy: unknown fields are errors, strings are stripped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class RuleBase(Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    action: str | None = None
    _kind: str = PrivateAttr(default="")

    @property
    def kind(self) -> registry.RuleKind:
        """The rule's kind (the one block it has)."""
        return registry.kind(self._kind)

    @model_validator(mode="after")
    def _one_kind(self) -> RuleBase:
        ks = registry.kinds()
        have = [k for k in ks if getattr(self, k.name, None) is not None]
        if len(have) != 1:
            options = ", ".join(f"{k.name}: {k.about}" for k in ks[:-1]) + f" or {ks[-1].name}: {ks[-1].about}"
            raise ValueError(f"a rule has exactly one of {options}; this one has "
                             f"{' and '.join(k.name for k in have) or 'none'}")
        self._kind = have[0].name
        have[0].validate(self)
        return self


class AuditConfig(Strict):
    store_text: bool = False


class SessionConfig(Strict):
    escalate_after: int = Field(ge=1, le=1_000_000)
    refusal: str = Field(default="I can't continue this conversation.", min_length=1)
    on_store_error: Literal["refuse", "allow"] = "refuse"  # the session store is down: fail closed, or serve


class MaskUpstream(Strict):
    """`mask_upstream:` the values a model never sees (docs/masking.md). The short form is the list."""

    values: list[str] = Field(min_length=1)
    answer: Literal["restore", "keep", "redact"] = "restore"
    vault: Literal["request", "session"] = "request"


class PolicyBase(Strict):
    version: Literal[1]
    name: str = Field(min_length=1)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    max_rollbacks: int = Field(default=32, ge=0, le=10_000)
    session: SessionConfig | None = None
    mask_upstream: MaskUpstream | list[str] | None = None

    @model_validator(mode="after")
    def _rules_together(self) -> PolicyBase:
        rules: list[Any] = getattr(self, "rules", [])
        for k in registry.kinds():
            n = sum(getattr(r, k.name, None) is not None for r in rules)
            if k.max_per_policy is not None and n > k.max_per_policy:
                most = "one" if k.max_per_policy == 1 else str(k.max_per_policy)
                raise ValueError(f"more than {most} {k.name} rule; a policy has at most {most}"
                                 + (f" ({k.max_reason})" if k.max_reason else ""))
        seen: set[str] = set()
        for r in rules:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} is used twice; give each rule its own id")
            seen.add(r.id)
        if self.mask_upstream is not None:
            _check_mask(self.mask_upstream, rules)
        return self


def _check_mask(mask: MaskUpstream | list[str], rules: list[Any]) -> None:
    """Each entry names a built-in pattern or a forbid rule of this policy."""
    from ingate.patterns import BUILTIN_PATTERNS

    values = mask.values if isinstance(mask, MaskUpstream) else mask
    if not values:
        raise ValueError("mask_upstream is empty; list the values to mask (email, phone, ...) or remove it")
    forbid = {r.id for r in rules if getattr(r, "forbid", None) is not None}
    for name in values:
        if name not in BUILTIN_PATTERNS and name not in forbid:
            raise ValueError(f"mask_upstream: {name!r} is neither a built-in pattern ({', '.join(BUILTIN_PATTERNS)}) "
                             "nor the id of a forbid rule in this policy; fix the name or add the rule")


def actions() -> tuple[str, ...]:
    """Every action some kind takes, in the order kinds list them."""
    return tuple(dict.fromkeys(a for k in registry.kinds() for a in k.actions))


@functools.cache
def _models(version: int) -> type[BaseModel]:
    ks = registry.kinds()
    fields: dict[str, Any] = {k.name: (k.block | None, None) for k in ks}
    fields.update(registry.option_fields())
    fields["action"] = (Literal[actions()] | None, None)  # type: ignore[valid-type]
    rule = create_model("Rule", __base__=RuleBase, **fields)
    return create_model("PolicyModel", __base__=PolicyBase, rules=(list[rule], Field(default_factory=list)))  # type: ignore[valid-type]


def policy_model() -> type[BaseModel]:
    """The schema of a policy file, for the kinds registered now."""
    return _models(registry.version())
