"""What a policy file may say: the YAML schema, validated with messages that say what to fix.

`ingate.policy` reads a file against it and turns each validated rule into its kind's spec (the
tagged union the gate compiles); this module only decides what is allowed and why not.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingate import encoders
from ingate.patterns import BUILTIN_PATTERNS

Action = Literal["prevent", "redact", "stop", "resample"]
ACTIONS = ("prevent", "redact", "stop", "resample")
FORBID_ACTIONS = ("prevent", "redact", "stop")
SEMANTIC_ACTIONS = ("resample", "stop")
PHRASE_MODES = ("separators", "confusables", "accents", "leet", "whole_word", "case_sensitive")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Forbid(_Strict):
    phrases: list[str] = Field(default_factory=list)
    phrases_file: str | None = None
    case_sensitive: bool = False
    # how phrases are read (README "Phrase matching"); separators default to ignore for prevent
    separators: Literal["ignore", "exact"] | None = None
    confusables: Literal["fold", "exact"] = "fold"
    accents: Literal["ignore", "exact"] = "ignore"
    leet: Literal["fold", "exact"] = "exact"
    whole_word: bool = False
    patterns: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _known_patterns(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in BUILTIN_PATTERNS:
                known = ", ".join(BUILTIN_PATTERNS)
                raise ValueError(f"unknown built-in pattern {name!r}; use one of: {known}")
        return v

    @field_validator("phrases", "regex")
    @classmethod
    def _no_empty(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            if not s.strip():
                raise ValueError(f"entry {i} is empty; remove it or write the text to forbid")
        return v

    @model_validator(mode="after")
    def _something(self) -> Forbid:
        if not (self.phrases or self.phrases_file or self.patterns or self.regex):
            raise ValueError("forbids nothing; give at least one of phrases, phrases_file, patterns, regex")
        modes = sorted(set(PHRASE_MODES) & self.model_fields_set)
        if modes and not (self.phrases or self.phrases_file):
            raise ValueError(f"{', '.join(modes)} only apply to phrases, and this rule has none; remove "
                             f"{'them' if len(modes) > 1 else 'it'} (patterns and regexes match as written)")
        return self


class Concept(_Strict):
    concept: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    examples_file: str | None = None

    @field_validator("examples")
    @classmethod
    def _no_empty(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            if not s.strip():
                raise ValueError(f"example {i} is empty; remove it or write an example sentence")
        return v

    @model_validator(mode="after")
    def _has_examples(self) -> Concept:
        if not self.examples and not self.examples_file:
            raise ValueError(f"concept {self.concept!r} has no examples; give examples: [...] or examples_file")
        return self


class Head(_Strict):
    train: str = Field(min_length=1)  # CSV or JSONL of labelled texts, relative to the policy file
    model: Literal["logistic", "mlp"] = "logistic"
    features: Literal["encoder", "engine"] = "encoder"


class Semantic(_Strict):
    deny: list[Concept] = Field(default_factory=list)
    allow_only: list[Concept] = Field(default_factory=list)
    head: Head | None = None
    threshold: float | Literal["auto"] | None = None
    max_false_block: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    encoder: str = encoders.DEFAULT  # validated against the registry, ingate.encoders (no torch import)
    window: int = Field(default=2, ge=0, le=16)  # earlier groups the score also sees
    max_group_tokens: int = Field(default=32, ge=4, le=512)
    min_group_tokens: int = Field(default=4, ge=1, le=512)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        known = encoders.names()
        if v not in known:
            raise ValueError(f"unknown encoder {v!r}; use one of: {', '.join(known)}")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and v != v:
            raise ValueError("threshold must be a finite number (or auto)")
        if isinstance(v, float) and not -1.0 <= v <= 1.0:
            raise ValueError(f"threshold {v} is not greater than or equal to -1 and less than or equal to 1: a "
                             "similarity or a probability (or auto)")
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> Semantic:
        if self.min_group_tokens > self.max_group_tokens:
            raise ValueError(f"min_group_tokens ({self.min_group_tokens}) exceeds max_group_tokens "
                             f"({self.max_group_tokens})")
        if self.head is not None:
            return self._head_rule()
        if self.threshold == "auto" or self.max_false_block is not None:
            raise ValueError("threshold: auto and max_false_block choose a trained head's threshold; add "
                             "head: {train: FILE} or set a number (`ingate calibrate` measures one)")
        if self.deny and self.allow_only:
            raise ValueError("deny and allow_only in one rule have no defined meaning; "
                             "write them as two rules (one deny, one allow_only)")
        if not self.deny and not self.allow_only:
            raise ValueError("names no concept; give deny: [...] or allow_only: [...]")
        return self

    def _head_rule(self) -> Semantic:
        if self.deny or self.allow_only:
            raise ValueError("a rule with a head judges by its classifier alone; put the similarity concepts "
                             "(deny/allow_only) in a second semantic rule of the same policy")
        if isinstance(self.threshold, float) and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a head's threshold is a probability in [0, 1] (got {self.threshold}), or auto")
        if self.max_false_block is not None and self.threshold != "auto" and self.threshold is not None:
            raise ValueError("max_false_block only applies to threshold: auto; remove it or the number")
        return self


class Entropy(_Strict):
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


class Rule(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    forbid: Forbid | None = None
    semantic: Semantic | None = None
    entropy: Entropy | None = None
    action: Action | None = None
    placeholder: str | None = None
    message: str | None = Field(default=None, min_length=1)  # entropy rules: released after a budget stop
    # semantic rules only
    max_retries: int | None = Field(default=None, ge=0, le=100)
    fallback: Literal["stop"] | None = None
    refusal: str | None = Field(default=None, min_length=1)
    apply_to: list[Literal["output", "input"]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        kinds = [k for k in ("forbid", "semantic", "entropy") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a rule has exactly one of forbid: (phrases, patterns), semantic: (concepts) or "
                             f"entropy: (bounds and budgets); this one has {' and '.join(kinds) or 'none'}")
        if self.entropy is not None:
            return self._entropy_rule()
        if self.message is not None:
            raise ValueError("message only applies to entropy rules; semantic rules use refusal")
        if self.action is None:
            valid = FORBID_ACTIONS if self.forbid is not None else SEMANTIC_ACTIONS
            raise ValueError(f"field action is missing; add it (one of {', '.join(valid)})")
        if self.placeholder is not None and self.action != "redact":
            raise ValueError(f"placeholder is only used with action: redact (this rule's action is {self.action})")
        if self.forbid is not None:
            if self.action not in FORBID_ACTIONS:
                raise ValueError(f"action {self.action!r} is for semantic rules; a forbid rule's action is one of "
                                 f"{', '.join(FORBID_ACTIONS)}")
            extra = [f for f in ("max_retries", "fallback", "refusal", "apply_to") if getattr(self, f) is not None]
            if extra:
                raise ValueError(f"{', '.join(extra)} only apply to semantic rules; remove them from this forbid rule")
        elif self.action not in SEMANTIC_ACTIONS:
            raise ValueError(f"a semantic rule's action is one of {', '.join(SEMANTIC_ACTIONS)} "
                             f"(got {self.action!r}); semantic groups are rolled back and regenerated, or end the "
                             "stream")
        return self

    def _entropy_rule(self) -> Rule:
        e = self.entropy
        assert e is not None
        extra = [f for f in ("placeholder", "max_retries", "fallback", "refusal", "apply_to")
                 if getattr(self, f) is not None]
        if extra:
            raise ValueError(f"{', '.join(extra)} do not apply to entropy rules; remove them")
        if (e.budget is not None or e.session_budget is not None) and self.action is None:
            raise ValueError("a budget needs action: stop (end the response at the next sentence boundary when "
                             "it is spent); field action is missing")
        if self.action is not None and self.action != "stop":
            raise ValueError(f"an entropy rule's action is stop (got {self.action!r})")
        return self


class AuditConfig(_Strict):
    store_text: bool = False


class SessionConfig(_Strict):
    escalate_after: int = Field(ge=1, le=1_000_000)
    refusal: str = Field(default="I can't continue this conversation.", min_length=1)
    on_store_error: Literal["refuse", "allow"] = "refuse"  # the session store is down: fail closed, or serve


class PolicyModel(_Strict):
    version: Literal[1]
    name: str = Field(min_length=1)
    rules: list[Rule] = Field(default_factory=list)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    max_rollbacks: int = Field(default=32, ge=0, le=10_000)
    session: SessionConfig | None = None

    @model_validator(mode="after")
    def _unique_ids(self) -> PolicyModel:
        if sum(r.entropy is not None for r in self.rules) > 1:
            raise ValueError("more than one entropy rule; a policy has at most one (its bound and budgets "
                             "apply to the whole response)")
        seen: set[str] = set()
        for r in self.rules:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} is used twice; give each rule its own id")
            seen.add(r.id)
        return self
