"""Policy files: schema, YAML loading, validation with errors that say what to fix.

A policy is validated and compiled once; compiled policies are cached by the hash of their
content (the YAML plus every file it reads), so two requests naming the same policy share
one set of automata and mask caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingate import encoders
from ingate.patterns import BUILTIN_PATTERNS

Action = Literal["prevent", "redact", "stop", "resample"]
ForbidAction = Literal["prevent", "redact", "stop"]
SemanticAction = Literal["resample", "stop"]
ACTIONS = ("prevent", "redact", "stop", "resample")
FORBID_ACTIONS = ("prevent", "redact", "stop")
SEMANTIC_ACTIONS = ("resample", "stop")


class PolicyError(ValueError):
    """A policy that cannot be used. Every message names the file, the rule and the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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

    def matching(self, action: str | None) -> PhraseMatching:
        sep = self.separators or ("ignore" if action == "prevent" else "exact")
        return PhraseMatching(separators=sep == "ignore", confusables=self.confusables == "fold",
                              accents=self.accents == "ignore", leet=self.leet == "fold",
                              whole_word=self.whole_word)


PHRASE_MODES = ("separators", "confusables", "accents", "leet", "whole_word", "case_sensitive")


@dataclass(frozen=True)
class PhraseMatching:
    """How a rule reads text for its phrases, defaults resolved (the gate turns it into a Fold)."""

    separators: bool = False  # True: ignored
    confusables: bool = True  # True: folded
    accents: bool = True  # True: ignored
    leet: bool = False  # True: folded
    whole_word: bool = False


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


class Semantic(_Strict):
    deny: list[Concept] = Field(default_factory=list)
    allow_only: list[Concept] = Field(default_factory=list)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, allow_inf_nan=False)
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

    @model_validator(mode="after")
    def _one_mode(self) -> Semantic:
        if self.deny and self.allow_only:
            raise ValueError("deny and allow_only in one rule have no defined meaning; "
                             "write them as two rules (one deny, one allow_only)")
        if not self.deny and not self.allow_only:
            raise ValueError("names no concept; give deny: [...] or allow_only: [...]")
        if self.min_group_tokens > self.max_group_tokens:
            raise ValueError(f"min_group_tokens ({self.min_group_tokens}) exceeds max_group_tokens "
                             f"({self.max_group_tokens})")
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


@dataclass(frozen=True)
class ConceptSpec:
    name: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class SemanticSpec:
    mode: Literal["deny", "allow_only"]
    concepts: tuple[ConceptSpec, ...]
    threshold: float | None  # None: the encoder's uncalibrated default
    encoder: str
    window: int
    max_group_tokens: int
    min_group_tokens: int
    max_retries: int
    fallback: str
    refusal: str | None
    apply_to: tuple[str, ...]


@dataclass(frozen=True)
class EntropySpec:
    max_token_entropy: float | None
    narrow: bool
    budget: float | None
    baseline: float
    session_budget: float | None
    message: str | None


# One validated rule with its files read, what the gate compiles: a tagged union of the three
# kinds, each carrying only its own fields. Code dispatches on the type (or on `kind`).

@dataclass(frozen=True)
class ForbidSpec:
    """Phrases, built-in patterns and regexes, matched on the bytes as they are generated."""

    id: str
    action: ForbidAction
    phrases: tuple[str, ...] = ()
    case_sensitive: bool = False
    matching: PhraseMatching = field(default_factory=PhraseMatching)
    patterns: tuple[str, ...] = ()  # built-in pattern names
    regex: tuple[str, ...] = ()
    placeholder: str | None = None  # None: each pattern's own, [REDACTED] for phrases and regexes
    kind: Literal["forbid"] = field(default="forbid", init=False)


@dataclass(frozen=True)
class SemanticRuleSpec:
    """Concepts whose similarity to a group of generated tokens (or the prompt) decides."""

    id: str
    action: SemanticAction
    semantic: SemanticSpec
    kind: Literal["semantic"] = field(default="semantic", init=False)


@dataclass(frozen=True)
class EntropyRuleSpec:
    """A per-token entropy bound and response and session budgets."""

    id: str
    action: Literal["stop"] | None  # None: a bound only reported or narrowed to, no budget
    entropy: EntropySpec
    kind: Literal["entropy"] = field(default="entropy", init=False)


RuleSpec: TypeAlias = ForbidSpec | SemanticRuleSpec | EntropyRuleSpec


@dataclass(frozen=True)
class Policy:
    name: str
    source: str  # file path, or "<builtin:default>", "<none>", "<string>"
    rules: tuple[RuleSpec, ...]  # in file order
    store_text: bool
    max_rollbacks: int
    digest: str = field(default="")
    escalate_after: int | None = None  # a session with this many violations is refused before generating
    refusal: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.rules

    @property
    def forbid_rules(self) -> tuple[ForbidSpec, ...]:
        return tuple(r for r in self.rules if isinstance(r, ForbidSpec))

    @property
    def semantic_rules(self) -> tuple[SemanticRuleSpec, ...]:
        return tuple(r for r in self.rules if isinstance(r, SemanticRuleSpec))

    @property
    def entropy_rule(self) -> EntropyRuleSpec | None:
        """The policy's entropy rule (validated: at most one)."""
        return next((r for r in self.rules if isinstance(r, EntropyRuleSpec)), None)


NONE_POLICY = Policy(name="none", source="<none>", rules=(), store_text=False, max_rollbacks=0, digest="none")


def _where(source: str, data: Any, loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into 'file: rule 'id' (rules[2]), field forbid.regex[0]'."""
    parts = [str(source)]
    rest = list(loc)
    if len(rest) >= 2 and rest[0] == "rules" and isinstance(rest[1], int):
        idx = rest[1]
        rid = None
        if isinstance(data, dict) and isinstance(data.get("rules"), list) and idx < len(data["rules"]):
            r = data["rules"][idx]
            rid = r.get("id") if isinstance(r, dict) else None
        parts.append(f"rule {rid!r} (rules[{idx}])" if rid else f"rules[{idx}] (no id)")
        rest = rest[2:]
    fld = ""
    for p in rest:
        fld += f"[{p}]" if isinstance(p, int) else (("." if fld else "") + str(p))
    if fld:
        parts.append(f"field {fld}")
    return ", ".join(parts)


def _fix_for(err: Mapping[str, Any]) -> str:
    t = err["type"]
    msg = err["msg"]
    if t == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if t == "missing":
        return "missing; add it"
    if t == "literal_error" and err["loc"][-1:] == ("action",):
        return f"must be one of {', '.join(ACTIONS)}"
    if t == "literal_error" and err["loc"][-1:] == ("fallback",):
        return "must be stop (end the stream with content_filter once the retries are spent)"
    if t == "literal_error" and "apply_to" in err["loc"]:
        return "each entry is output (check generated groups) or input (check the prompt before generating)"
    if t == "finite_number":
        return "must be a finite number"
    if t == "literal_error" and err["loc"] == ("version",):
        return "must be 1 (write `version: 1` at the top)"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:]


def _read_lines_file(base: Path, name: str, where: str, what: str = "phrase") -> list[str]:
    path = (base / name) if not Path(name).is_absolute() else Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{where}: {what}s file {str(path)!r} does not exist; "
                           "the path is relative to the policy file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{where}: cannot read {what}s file {str(path)!r}: {e}"]) from None
    out = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in out if ln and not ln.startswith("#")]
    if not out:
        raise PolicyError([f"{where}: {what}s file {str(path)!r} holds no {what}; write one {what} a line"])
    return out


def _semantic_spec(rule: Rule, i: int, source: str, data: Any, base: Path, digest: Any) -> SemanticRuleSpec:
    sem = rule.semantic
    assert sem is not None
    mode: Literal["deny", "allow_only"] = "deny" if sem.deny else "allow_only"
    concepts: list[ConceptSpec] = []
    for j, c in enumerate(sem.deny or sem.allow_only):
        examples = list(c.examples)
        if c.examples_file:
            where = _where(source, data, ("rules", i, "semantic", mode, j, "examples_file"))
            extra = _read_lines_file(base, c.examples_file, where, "example")
            digest.update("\n".join(extra).encode("utf-8"))
            examples += extra
        concepts.append(ConceptSpec(c.concept, tuple(examples)))
    spec = SemanticSpec(mode=mode, concepts=tuple(concepts), threshold=sem.threshold, encoder=sem.encoder,
                        window=sem.window, max_group_tokens=sem.max_group_tokens,
                        min_group_tokens=sem.min_group_tokens,
                        max_retries=2 if rule.max_retries is None else rule.max_retries,
                        fallback=rule.fallback or "stop", refusal=rule.refusal,
                        apply_to=tuple(rule.apply_to or ("output",)))
    return SemanticRuleSpec(rule.id, cast(SemanticAction, rule.action), spec)


def _forbid_spec(rule: Rule, i: int, source: str, data: Any, base: Path, digest: Any) -> ForbidSpec:
    fb = rule.forbid
    assert fb is not None
    phrases = list(fb.phrases)
    if fb.phrases_file:
        where = _where(source, data, ("rules", i, "forbid", "phrases_file"))
        phrases += (extra := _read_lines_file(base, fb.phrases_file, where))
        digest.update("\n".join(extra).encode("utf-8"))
    return ForbidSpec(rule.id, cast(ForbidAction, rule.action), phrases=tuple(phrases),
                      case_sensitive=fb.case_sensitive, matching=fb.matching(rule.action),
                      patterns=tuple(fb.patterns), regex=tuple(fb.regex), placeholder=rule.placeholder)


def _entropy_spec(rule: Rule) -> EntropyRuleSpec:
    en = rule.entropy
    assert en is not None
    return EntropyRuleSpec(rule.id, cast(Literal["stop"] | None, rule.action), EntropySpec(
        en.max_token_entropy, en.on_exceed == "narrow", en.budget, en.baseline, en.session_budget, rule.message))


def _rule_spec(rule: Rule, i: int, source: str, data: Any, base: Path, digest: Any) -> RuleSpec:
    """The validated rule as its kind's spec, its files read (and hashed into `digest`)."""
    if rule.entropy is not None:
        return _entropy_spec(rule)
    if rule.semantic is not None:
        return _semantic_spec(rule, i, source, data, base, digest)
    return _forbid_spec(rule, i, source, data, base, digest)


def parse_policy(text: str, source: str = "<string>", base: Path | None = None) -> Policy:
    """Validate a policy's YAML text. Files it names are read relative to `base`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([f"{source}: not valid YAML{at}: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: a policy is a YAML mapping with version, name and rules; "
                           f"found {type(data).__name__}"])
    try:
        model = PolicyModel.model_validate(data)
    except ValidationError as e:
        raise PolicyError([f"{_where(source, data, tuple(err['loc']))}: {_fix_for(err)}"
                           for err in e.errors()]) from None
    base = base or Path.cwd()
    rules: list[RuleSpec] = []
    digest = hashlib.sha256(text.encode("utf-8"))
    problems: list[str] = []
    for i, r in enumerate(model.rules):
        try:
            rules.append(_rule_spec(r, i, source, data, base, digest))
        except PolicyError as e:
            problems.extend(e.problems)
    if problems:
        raise PolicyError(problems)
    return Policy(name=model.name, source=source, rules=tuple(rules), store_text=model.audit.store_text,
                  max_rollbacks=model.max_rollbacks, digest=digest.hexdigest(),
                  escalate_after=model.session.escalate_after if model.session else None,
                  refusal=model.session.refusal if model.session else "")


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file; `None` or "default" gives the shipped default, "none" means ungoverned."""
    if path is None or str(path) == "default":
        text = resources.files("ingate.policies").joinpath("default.yaml").read_text(encoding="utf-8")
        base = Path(str(resources.files("ingate.policies")))
        return parse_policy(text, source="<builtin:default>", base=base)
    if str(path) == "none":
        return NONE_POLICY
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: policy file does not exist; pass a YAML policy, 'default' or 'none'"]) from None
    except IsADirectoryError:
        raise PolicyError([f"{p}: is a directory; pass a YAML policy file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{p}: cannot read policy: {e}"]) from None
    return parse_policy(text, source=str(p), base=p.parent)
