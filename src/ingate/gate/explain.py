"""What `ingate check --text` says about a match: where it is in the original text, and which
of the rule's folds it took to match (so a surprising match can be traced to its mode)."""

from __future__ import annotations

from dataclasses import replace

from ingate.gate.detector import CheckedDetector, Match, PatternDetector, PhraseDetector, compile_phrase_detector

# the folds that can be turned off, strongest first, with what they are called in a policy
_MODES = (("separators", "separators ignored"), ("confusables", "confusables folded"),
          ("leet", "leet folded"), ("accents", "accents ignored"))


def needed_modes(d: PhraseDetector, span: bytes, labels: frozenset[int]) -> list[str]:
    """The modes without which the phrase would not match `span` (one at a time, for each on)."""
    out = []
    phrases = [d.labels[i] for i in sorted(labels)]
    for name, said in _MODES:
        if not getattr(d.fold, name):
            continue
        strict = compile_phrase_detector(d.rule_id, d.action, phrases, replace(d.fold, **{name: False}), "")
        if not strict.matches(span):
            out.append(said)
    return out


def describe(d: PatternDetector, text: str, m: Match) -> str:
    data = text.encode("utf-8")
    st, end, labels = m
    names = ", ".join(repr(d.labels[i]) for i in sorted(labels))
    c0 = len(data[:st].decode("utf-8", errors="replace"))
    c1 = len(data[:end].decode("utf-8", errors="replace"))
    shown = data[st:end].decode("utf-8", errors="replace")
    line = f"  match: rule {d.rule_id} ({d.action}) {names}: {shown!r} at characters {c0}-{c1}"
    if isinstance(d, CheckedDetector) and d.check is not None:
        line += " (a whole number" + (f"; {d.check.name} checksum passed)" if d.check.name != "whole number" else ")")
    if isinstance(d, PhraseDetector):
        modes = needed_modes(d, data[st:end], labels)
        line += " via " + (", ".join(modes) if modes else "the phrase as written (case, width and spaces folded)")
    return line + "\n    " + text.replace("\n", " ") + "\n    " + " " * c0 + "^" * max(1, c1 - c0)
