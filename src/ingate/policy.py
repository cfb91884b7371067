"""Policy files: schema, YAML loading, validation with errors that say what to fix.

A policy is validated and compiled once; compiled policies are cached by the hash of their
content (the YAML plus every file it reads), so two requests naming the same policy share
one set of automata and mask caches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ingate.patterns import BUILTIN_PATTERNS

Action = Literal["prevent", "redact", "stop"]
ACTIONS = ("prevent", "redact", "stop")


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
        return self


class Rule(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    forbid: Forbid
    action: Action
    placeholder: str | None = None

    @model_validator(mode="after")
    def _placeholder_only_for_redact(self) -> Rule:
        if self.placeholder is not None and self.action != "redact":
            raise ValueError(f"placeholder is only used with action: redact (this rule's action is {self.action})")
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
        seen: set[str] = set()
        for r in self.rules:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} is used twice; give each rule its own id")
            seen.add(r.id)
        return self


@dataclass(frozen=True)
class RuleSpec:
    """One validated rule with its files read: what the gate compiles."""

    id: str
    action: Action
    phrases: tuple[str, ...]
    case_sensitive: bool
    patterns: tuple[str, ...]  # built-in pattern names
    regex: tuple[str, ...]
    placeholder: str | None


@dataclass(frozen=True)
class Policy:
    name: str
    source: str  # file path, or "<builtin:default>", "<none>", "<string>"
    rules: tuple[RuleSpec, ...]
    store_text: bool
    max_rollbacks: int
    digest: str = field(default="")
    escalate_after: int | None = None  # a session with this many violations is refused before generating
    refusal: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.rules


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


def _fix_for(err: dict[str, Any]) -> str:
    t = err["type"]
    msg = err["msg"]
    if t == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if t == "missing":
        return "missing; add it"
    if t == "literal_error" and err["loc"][-1:] == ("action",):
        return f"must be one of {', '.join(ACTIONS)}"
    if t == "literal_error" and err["loc"] == ("version",):
        return "must be 1 (write `version: 1` at the top)"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:]


def _read_phrases_file(base: Path, name: str, where: str) -> list[str]:
    path = (base / name) if not Path(name).is_absolute() else Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{where}: phrases file {str(path)!r} does not exist; "
                           "the path is relative to the policy file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{where}: cannot read phrases file {str(path)!r}: {e}"]) from None
    out = [ln.strip() for ln in text.splitlines()]
    out = [ln for ln in out if ln and not ln.startswith("#")]
    if not out:
        raise PolicyError([f"{where}: phrases file {str(path)!r} holds no phrase; write one phrase a line"])
    return out


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
    for i, r in enumerate(model.rules):
        phrases = list(r.forbid.phrases)
        if r.forbid.phrases_file:
            where = _where(source, data, ("rules", i, "forbid", "phrases_file"))
            extra = _read_phrases_file(base, r.forbid.phrases_file, where)
            digest.update("\n".join(extra).encode("utf-8"))
            phrases += extra
        rules.append(RuleSpec(id=r.id, action=r.action, phrases=tuple(phrases),
                              case_sensitive=r.forbid.case_sensitive, patterns=tuple(r.forbid.patterns),
                              regex=tuple(r.forbid.regex), placeholder=r.placeholder))
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
