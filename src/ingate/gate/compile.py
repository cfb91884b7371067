"""A policy compiled for the gate: its rules' detectors and token-mask caches, built once per policy
content and shared by every stream."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ingate.gate.automaton import compile_regexes
from ingate.gate.checks import CHECKS
from ingate.gate.detector import CheckedDetector, PatternDetector, compile_phrase_detector
from ingate.gate.masks import MaskCache, TokenTable
from ingate.gate.normalize import Fold
from ingate.gate.regex import PatternError
from ingate.patterns import BUILTIN_PATTERNS, CHECKED
from ingate.policy import ForbidSpec, Policy, PolicyError

if TYPE_CHECKING:
    from ingate.semantic.concepts import SemanticRule


class CompiledPolicy:
    """A policy's detectors and token-mask caches: built once, shared by every stream."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.detectors: list[PatternDetector] = []
        problems: list[str] = []
        for rule in policy.forbid_rules:
            try:
                self.detectors.extend(_compile_forbid(policy.source, rule))
            except PolicyError as e:
                problems.extend(e.problems)
        self.semantic: list[SemanticRule] = []  # compiled only when the policy has one (imports torch)
        for sem in policy.semantic_rules:
            from ingate.semantic.concepts import compile_semantic

            try:
                self.semantic.append(compile_semantic(policy.source, sem))
            except PolicyError as e:
                problems.extend(e.problems)
        if problems:
            raise PolicyError(problems)
        self.semantic_output = [r for r in self.semantic if "output" in r.spec.apply_to]
        self.semantic_input = [r for r in self.semantic if "input" in r.spec.apply_to]
        self.prevent_indices = [i for i, d in enumerate(self.detectors) if d.action == "prevent"]
        self._masks: dict[int, MaskCache] = {}

    def prepare(self, table: TokenTable) -> None:
        """Compute the mask rows for the automata's start states ahead of the first request.

        The start state is where a whole forbidden phrase fits in one token (" Eiffel"), the
        most common prevention; a cold row costs a few milliseconds, so no request pays for it.
        """
        masks = self.masks_for(table)
        for i in self.prevent_indices:
            d = self.detectors[i]
            masks.row(i, d, d.search_initial())

    def masks_for(self, table: TokenTable) -> MaskCache:
        mc = self._masks.get(id(table))
        if mc is None or mc.table is not table:
            mc = self._masks[id(table)] = MaskCache(table)
        return mc


def _compile_forbid(source: str, rule: ForbidSpec) -> list[PatternDetector]:
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
        labels = list(rule.patterns) + [f"regex[{i}]" for i in range(len(rule.regex))]
        phs = [rule.placeholder or BUILTIN_PATTERNS[p][1] for p in rule.patterns]
        phs += [rule.placeholder or "[REDACTED]"] * len(rule.regex)
        # One automaton scans the union for redact and stop. A prevent rule also needs a search
        # DFA per automaton for its masks, and the union's can explode (IBAN x api_key: 10^5+
        # states) where each pattern's alone stays small, so prevent gets one per pattern.
        # A checksummed pattern has its own automaton too: its threads carry the check's state.
        checked = [i for i, p in enumerate(rule.patterns) if p in CHECKED]
        plain = [i for i in range(len(regexes)) if i not in checked]
        groups = [[i] for i in checked]
        groups += ([plain] if plain else []) if rule.action != "prevent" else [[i] for i in plain]
        for g in groups:
            try:
                dfa = compile_regexes([regexes[i] for i in g])
            except PatternError as e:
                raise PolicyError([f"{where}, field forbid: {e}"]) from None
            ls, ps = [labels[i] for i in g], [phs[i] for i in g]
            if g[0] in checked:
                check = CHECKS[CHECKED[labels[g[0]]]]
                mask_dfa = compile_regexes([f"(?:{regexes[g[0]]}){check.edge}"])
                out.append(CheckedDetector(rule.id, action, dfa, ls, ps, check=check, mask_dfa=mask_dfa))
            else:
                out.append(PatternDetector(rule.id, action, dfa, ls, ps))
    for d in out:
        if d.rolls_back:
            try:
                _ = d.search  # masks need the search DFA: build it now, not on the first request
            except PatternError as e:
                raise PolicyError([f"{where}, field forbid: {e}"]) from None
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


_COMPILED: dict[str, CompiledPolicy] = {}


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile once per content hash; later calls return the cached automata and masks."""
    key = policy.digest or str(id(policy))
    c = _COMPILED.get(key)
    if c is None:
        c = _COMPILED[key] = CompiledPolicy(policy)
    return c
