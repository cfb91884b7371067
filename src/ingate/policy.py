"""Policy files: YAML loading, and the validated rules the gate compiles.

A file is checked against `ingate.policy_schema` (errors name the file, the rule and the field,
and say what to fix) and each rule becomes its kind's spec: `ForbidSpec`, `SemanticRuleSpec` or
`EntropyRuleSpec`, a tagged union (`RuleSpec`) in which no rule carries another kind's fields.
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
from pydantic import ValidationError

from ingate.policy_schema import ACTIONS, Forbid, PolicyModel, Rule
from ingate.policy_schema import Head as HeadModel

ForbidAction = Literal["prevent", "redact", "stop"]
SemanticAction = Literal["resample", "stop"]


class PolicyError(ValueError):
    """A policy that cannot be used. Every message names the file, the rule and the field."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class PhraseMatching:
    """How a rule reads text for its phrases, defaults resolved (the gate turns it into a Fold)."""

    separators: bool = False  # True: ignored
    confusables: bool = True  # True: folded
    accents: bool = True  # True: ignored
    leet: bool = False  # True: folded
    whole_word: bool = False



@dataclass(frozen=True)
class ConceptSpec:
    name: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class HeadSpec:
    """A classifier trained on labelled texts at compile time (`semantic.head`)."""

    train: str  # the file, as resolved
    rows: tuple[tuple[str, bool, str | None, str | None], ...]  # (text, admissible, source, prompt)
    model: Literal["logistic", "mlp"]
    features: Literal["encoder", "engine"]


@dataclass(frozen=True)
class SemanticSpec:
    mode: Literal["deny", "allow_only"]  # a head rule is deny: blocked when P(inadmissible) >= threshold
    concepts: tuple[ConceptSpec, ...]
    threshold: float | None  # None: the encoder's uncalibrated default, or for a head threshold: auto
    encoder: str
    window: int
    max_group_tokens: int
    min_group_tokens: int
    max_retries: int
    fallback: str
    refusal: str | None
    apply_to: tuple[str, ...]
    head: HeadSpec | None = None
    max_false_block: float = 0.05  # threshold: auto keeps cross-validated false blocks within this


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
    on_store_error: str = "refuse"  # the session store cannot be reached: refuse (fail closed) or allow

    @property
    def is_empty(self) -> bool:
        return not self.rules

    @property
    def needs_session_state(self) -> bool:
        """Does governing a request need its session's state (escalation, a session entropy budget)?"""
        rule = self.entropy_rule
        return self.escalate_after is not None or (rule is not None and rule.entropy.session_budget is not None)

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
    mode: Literal["deny", "allow_only"] = "deny" if sem.deny or sem.head else "allow_only"
    concepts: list[ConceptSpec] = []
    for j, c in enumerate(sem.deny or sem.allow_only):
        examples = list(c.examples)
        if c.examples_file:
            where = _where(source, data, ("rules", i, "semantic", mode, j, "examples_file"))
            extra = _read_lines_file(base, c.examples_file, where, "example")
            digest.update("\n".join(extra).encode("utf-8"))
            examples += extra
        concepts.append(ConceptSpec(c.concept, tuple(examples)))
    head = None
    if sem.head is not None:
        head = _head_spec(sem.head, _where(source, data, ("rules", i, "semantic", "head", "train")), base, digest)
    threshold = sem.threshold if isinstance(sem.threshold, float) else None
    spec = SemanticSpec(mode=mode, concepts=tuple(concepts), threshold=threshold, encoder=sem.encoder,
                        window=sem.window, max_group_tokens=sem.max_group_tokens,
                        min_group_tokens=sem.min_group_tokens,
                        max_retries=2 if rule.max_retries is None else rule.max_retries,
                        fallback=rule.fallback or "stop", refusal=rule.refusal,
                        apply_to=tuple(rule.apply_to or ("output",)), head=head,
                        max_false_block=0.05 if sem.max_false_block is None else sem.max_false_block)
    return SemanticRuleSpec(rule.id, cast(SemanticAction, rule.action), spec)


def _head_spec(h: HeadModel, where: str, base: Path, digest: Any) -> HeadSpec:
    from ingate.labelled import CalibrationError, read_rows

    path = (base / h.train) if not Path(h.train).is_absolute() else Path(h.train)
    try:
        rows = read_rows(path)
    except CalibrationError as e:
        raise PolicyError([f"{where}: {e}"]) from None
    for r in rows:
        digest.update(f"{int(r.admissible)}\0{r.source or ''}\0{r.prompt or ''}\0{r.text}\0".encode())
    return HeadSpec(str(path), tuple((r.text, r.admissible, r.source, r.prompt) for r in rows), h.model,
                    h.features)


def _forbid_spec(rule: Rule, i: int, source: str, data: Any, base: Path, digest: Any) -> ForbidSpec:
    fb = rule.forbid
    assert fb is not None
    phrases = list(fb.phrases)
    if fb.phrases_file:
        where = _where(source, data, ("rules", i, "forbid", "phrases_file"))
        phrases += (extra := _read_lines_file(base, fb.phrases_file, where))
        digest.update("\n".join(extra).encode("utf-8"))
    return ForbidSpec(rule.id, cast(ForbidAction, rule.action), phrases=tuple(phrases),
                      case_sensitive=fb.case_sensitive, matching=_matching(fb, rule.action),
                      patterns=tuple(fb.patterns), regex=tuple(fb.regex), placeholder=rule.placeholder)


def _matching(fb: Forbid, action: str | None) -> PhraseMatching:
    """The rule's phrase modes, defaults resolved: separators are ignored by default for prevent."""
    sep = fb.separators or ("ignore" if action == "prevent" else "exact")
    return PhraseMatching(separators=sep == "ignore", confusables=fb.confusables == "fold",
                          accents=fb.accents == "ignore", leet=fb.leet == "fold", whole_word=fb.whole_word)


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
                  refusal=model.session.refusal if model.session else "",
                  on_store_error=model.session.on_store_error if model.session else "refuse")


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
