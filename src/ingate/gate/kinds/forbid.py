"""The `forbid` rule kind: phrases, built-in patterns and regexes, matched on the bytes as they are
generated, whatever the tokenization.

    - id: tower
      forbid: {phrases: [Eiffel], separators: ignore}
      action: prevent           # or redact (placeholder: ...), or stop

Everything of the kind is here: what a policy may write (`Forbid`), the validated spec
(`ForbidSpec`), the compiled detectors (one phrase automaton, one automaton per pattern group),
and the check that steps a detector over one stream (`ForbidCheck`). Its state is the detector's
threads; one snapshot per token makes a rollback exact. What it finds follows the rule's action:
`prevent` the earliest match, `redact` every match, `stop` (and a stop sequence, `end`) the earliest.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import Field, field_validator, model_validator

from ingate.gate.automaton import compile_regexes
from ingate.gate.checks import CHECKS
from ingate.gate.detector import CheckedDetector, Match, PatternDetector, compile_phrase_detector
from ingate.gate.explain import describe_match
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.gate.masks import MaskCache
from ingate.gate.normalize import Fold
from ingate.gate.regex import PatternError
from ingate.gate.scatter import scatter_detector
from ingate.patterns import BUILTIN_PATTERNS, CHECKED
from ingate.policy.kinds import RuleKind, SpecContext
from ingate.policy.model import PolicyError
from ingate.policy.schema import Strict

ForbidAction = Literal["prevent", "redact", "stop"]
PHRASE_MODES = ("separators", "confusables", "accents", "leet", "whole_word", "case_sensitive")
_KIND = {"prevent": Kind.PREVENT, "stop": Kind.STOP, "end": Kind.END, "redact": Kind.REDACT}


# ---- what a policy may write ---------------------------------------------------------------------
class Forbid(Strict):
    phrases: list[str] = Field(default_factory=list)
    phrases_file: str | None = None
    case_sensitive: bool = False
    # how phrases are read (docs/policies.md, "Phrase matching"); separators default to ignore for prevent
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
                raise ValueError(f"unknown built-in pattern {name!r}; use one of: {', '.join(BUILTIN_PATTERNS)}")
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


# ---- the validated rule --------------------------------------------------------------------------
@dataclass(frozen=True)
class PhraseMatching:
    """How a rule reads text for its phrases, defaults resolved (the gate turns it into a Fold)."""

    separators: bool = False  # True: ignored
    confusables: bool = True  # True: folded
    accents: bool = True  # True: ignored
    leet: bool = False  # True: folded
    whole_word: bool = False


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

    def inside_structure(self) -> ForbidSpec:
        """Inside structured output a redaction could break the JSON: the match is prevented instead."""
        return dataclasses.replace(self, action="prevent") if self.action == "redact" else self


@dataclass
class ForbidPart:
    """A policy's forbid rules compiled: their detectors, and which of them masks (prevent)."""

    detectors: list[PatternDetector]

    @property
    def prevent_indices(self) -> list[int]:
        return [i for i, d in enumerate(self.detectors) if d.action == "prevent"]


# ---- the kind --------------------------------------------------------------------------------------
class ForbidKind(RuleKind):
    name = "forbid"
    block = Forbid
    about = "(phrases, patterns)"
    actions = ("prevent", "redact", "stop")
    options = {"placeholder": (str | None, None)}

    def validate(self, rule: Any) -> None:
        super().validate(rule)
        if rule.placeholder is not None and rule.action != "redact":
            raise ValueError(f"placeholder is only used with action: redact (this rule's action is {rule.action})")

    def spec(self, rule: Any, ctx: SpecContext) -> ForbidSpec:
        fb = rule.forbid
        phrases = list(fb.phrases)
        if fb.phrases_file:
            phrases += ctx.read_lines(fb.phrases_file, ("forbid", "phrases_file"))
        sep = fb.separators or ("ignore" if rule.action == "prevent" else "exact")
        matching = PhraseMatching(separators=sep == "ignore", confusables=fb.confusables == "fold",
                                  accents=fb.accents == "ignore", leet=fb.leet == "fold", whole_word=fb.whole_word)
        return ForbidSpec(rule.id, cast(ForbidAction, rule.action), phrases=tuple(phrases),
                          case_sensitive=fb.case_sensitive, matching=matching, patterns=tuple(fb.patterns),
                          regex=tuple(fb.regex), placeholder=rule.placeholder)

    def compile(self, source: str, specs: list[Any]) -> ForbidPart:
        detectors: list[PatternDetector] = []
        problems: list[str] = []
        for rule in specs:
            try:
                detectors.extend(compile_forbid(source, rule))
            except PolicyError as e:
                problems.extend(e.problems)
        if problems:
            raise PolicyError(problems)
        return ForbidPart(detectors)

    def prepare(self, part: ForbidPart, masks: MaskCache) -> None:
        """The mask rows of the automata's start states, ahead of the first request: the start state
        is where a whole forbidden phrase fits in one token (" Eiffel"), the most common prevention;
        a cold row costs a few milliseconds, so no request pays for it."""
        for i in part.prevent_indices:
            d = part.detectors[i]
            masks.row(i, d, d.search_initial())

    def checks(self, part: ForbidPart, options: Any) -> list[Check]:
        """The rules' detectors, and for each pattern rule the values its patterns find in the request,
        in any grouping (`ingate.gate.scatter`): a detector of this request alone, masked from a
        cache of its own."""
        out: list[Check] = [ForbidCheck(d, i) for i, d in enumerate(part.detectors)]
        context = list(getattr(options, "context", ()))
        for d in part.detectors if context else ():
            if d.kind == "patterns":
                sd = scatter_detector(d, context)
                if sd is not None:
                    out.append(ForbidCheck(sd, 0, private=True))
        return out

    def describe(self, spec: ForbidSpec) -> str:
        what = []
        if spec.phrases:
            what.append(f"{len(spec.phrases)} phrase(s)" + (" case-sensitive" if spec.case_sensitive else ""))
        if spec.patterns:
            what.append("patterns " + ", ".join(spec.patterns))
        if spec.regex:
            what.append(f"{len(spec.regex)} regex")
        return f"  - {spec.id}: {spec.action} on {'; '.join(what)}"

    def report(self, part: ForbidPart) -> list[str]:
        out = []
        for d in part.detectors:
            extra = f", mask states {len(d.search.accept)}" if d.rolls_back else ""
            fold = getattr(d, "fold", None)
            extra += f"; {fold.describe()}" if fold is not None else ""
            out.append(f"    {d.rule_id}/{d.kind}: {len(d.dfa.trans)} DFA states{extra}")
        return out

    def text_report(self, part: ForbidPart, text: str) -> list[str]:
        data = text.encode("utf-8")
        return [describe_match(d, text, m) for d in part.detectors for m in d.matches(data)]


KIND = ForbidKind()


def compile_forbid(source: str, rule: ForbidSpec) -> list[PatternDetector]:
    where = f"{source}, rule {rule.id!r}"
    out: list[PatternDetector] = []
    action = rule.action
    if rule.phrases:
        try:
            out.append(compile_phrase_detector(rule.id, action, list(rule.phrases), fold_of(rule),
                                               rule.placeholder or "[REDACTED]"))
        except PatternError as e:
            raise PolicyError([f"{where}, field forbid.phrases: {e}"]) from None
    regexes = [BUILTIN_PATTERNS[p][0] for p in rule.patterns] + list(rule.regex)
    if regexes:
        for i, rx in enumerate(rule.regex):  # locate a bad regex before compiling the union
            try:
                compile_regexes([rx])
            except PatternError as e:
                raise PolicyError([f"{where}, field forbid.regex[{i}]: {e}"]) from None
        out += _pattern_detectors(where, rule, regexes)
    for d in out:
        if d.rolls_back:
            try:
                _ = d.search  # masks need the search DFA: build it now, not on the first request
            except PatternError as e:
                raise PolicyError([f"{where}, field forbid: {e}"]) from None
    return out


def _pattern_detectors(where: str, rule: ForbidSpec, regexes: list[str]) -> list[PatternDetector]:
    """One automaton scans the union for redact and stop. A prevent rule also needs a search DFA per
    automaton for its masks, and the union's can explode (IBAN x api_key: 10^5+ states) where each
    pattern's alone stays small, so prevent gets one per pattern. A checksummed pattern has its own
    automaton too: its threads carry the check's state."""
    labels = list(rule.patterns) + [f"regex[{i}]" for i in range(len(rule.regex))]
    phs = [rule.placeholder or BUILTIN_PATTERNS[p][1] for p in rule.patterns]
    phs += [rule.placeholder or "[REDACTED]"] * len(rule.regex)
    checked = [i for i, p in enumerate(rule.patterns) if p in CHECKED]
    plain = [i for i in range(len(regexes)) if i not in checked]
    groups = [[i] for i in checked]
    groups += ([plain] if plain else []) if rule.action != "prevent" else [[i] for i in plain]
    out: list[PatternDetector] = []
    for g in groups:
        try:
            dfa = compile_regexes([regexes[i] for i in g])
        except PatternError as e:
            raise PolicyError([f"{where}, field forbid: {e}"]) from None
        ls, ps = [labels[i] for i in g], [phs[i] for i in g]
        if g[0] in checked:
            check = CHECKS[CHECKED[labels[g[0]]]]
            mask_dfa = compile_regexes([f"(?:{regexes[g[0]]}){check.edge}"])
            out.append(CheckedDetector(rule.id, rule.action, dfa, ls, ps, check=check, mask_dfa=mask_dfa))
        else:
            out.append(PatternDetector(rule.id, rule.action, dfa, ls, ps))
    return out


def fold_of(rule: ForbidSpec) -> Fold:
    m = rule.matching
    return Fold(casefold=not rule.case_sensitive, confusables=m.confusables, accents=m.accents,
                separators=m.separators, leet=m.leet, whole_word=m.whole_word)


def stop_sequences(stop: Sequence[str]) -> PatternDetector:
    """The caller's stop sequences as one exact-bytes detector, so a sequence split across tokens
    is held back like any partial match and never half-released."""
    empty = [i for i, x in enumerate(stop) if not x]
    if empty:
        raise ValueError(f"stop[{empty[0]}] is empty; remove it")
    dfa = compile_regexes([re.escape(x) for x in stop])
    return PatternDetector("stop_sequence", "end", dfa, list(stop), list(stop))


# ---- the check on one stream -------------------------------------------------------------------------
class ForbidCheck(Check):
    early = True
    may_reveal = True

    def __init__(self, d: PatternDetector, index: int, private: bool = False):
        """`index`: the detector's row key in the policy's mask cache; `private`: the detector is this
        stream's own (the request's values), and its masks are cached apart (`own_masks`)."""
        self.d, self.index, self.private = d, index, private
        self.own_masks: MaskCache | None = None
        self.rule_id = d.rule_id
        self.kind = _KIND[d.action]
        self.prevents = self.kind is Kind.PREVENT
        self.state: Any = d.initial()
        self.snaps: list[Any] = []  # the state before each token

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        self.snaps.append(self.state)
        if not data:
            return None
        self.state, ms = self.d.advance(self.state, data, p0)
        return self._found(ms) if ms else None

    def hold(self, s: Stream, exact: bool) -> int | None:
        st = self.d.earliest(self.state, len(s.raw))
        if st is not None and self.d.rolls_back and not exact:
            st = s.tok_start[s.token_at(st)]  # a rollback takes back whole tokens: hold from one's start
        return st

    def rollback(self, s: Stream, k: int) -> None:
        if k < len(self.snaps):
            self.state = self.snaps[k]
            del self.snaps[k:]

    def finish(self, s: Stream) -> list[Finding]:
        _, ms = self.d.finish(self.state, len(s.raw))
        return self._found(ms) if ms else []

    # ---- masks and logprobs --------------------------------------------------------------
    def mask_state(self, s: Stream) -> tuple[int, PatternDetector, Any]:
        """(mask row key, detector, search state) here: what `MaskCache.forbidden_ids` reads.

        Every live partial match began at or after the earliest live start, so the search DFA run
        over the text from there reaches the same live set as a run over all of it."""
        d = self.d
        start = d.earliest(self.state, len(s.raw))
        ss = d.search_initial() if start is None else d.advance_search(d.search_initial(), bytes(s.raw[start:]))
        return self.index, d, ss

    def reveals(self, k: int, data: bytes, pos: int) -> bool:
        """Would `data` at token k (raw offset `pos`) complete a match or leave one undecided?"""
        nt, ms = self.d.advance(self.snaps[k], data, pos)
        return bool(ms) or self.d.earliest(nt, pos + len(data)) is not None

    def _found(self, ms: list[Match]) -> list[Finding]:
        d = self.d
        if self.kind is Kind.REDACT:
            return [Finding(Kind.REDACT, d.rule_id, st, end, self.describe(labels),
                            placeholder=d.placeholders[min(labels)], label=d.labels[min(labels)])
                    for st, end, labels in ms]
        st, end, labels = min(ms, key=lambda m: m[0])
        return [Finding(self.kind, d.rule_id, st, end, self.describe(labels))]

    def describe(self, labels: frozenset[int]) -> str:
        names = [self.d.labels[i] for i in sorted(labels)]
        return ("phrase " if self.d.kind == "phrases" else "pattern ") + ", ".join(repr(n) for n in names[:3])
