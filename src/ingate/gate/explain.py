"""What `ingate check` reports: the compiled policy (`policy_report`), and with --text every
match, where it is in the original text and which of the rule's folds it took (`text_report`),
so a surprising match can be traced to its mode. Each rule kind writes its own lines; the helpers
here are the ones they share. The CLI only prints these lines."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ingate.gate.compile import CompiledPolicy
from ingate.gate.detector import CheckedDetector, Match, PatternDetector, PhraseDetector, compile_phrase_detector
from ingate.policy.kinds import kind, kinds

if TYPE_CHECKING:
    from ingate.semantic.concepts import SemanticRule

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


def describe_match(d: PatternDetector, text: str, m: Match) -> str:
    data = text.encode("utf-8")
    st, end, labels = m
    names = ", ".join(repr(d.labels[i]) for i in sorted(labels))
    c0 = len(data[:st].decode("utf-8", errors="replace"))
    c1 = len(data[:end].decode("utf-8", errors="replace"))
    shown = data[st:end].decode("utf-8", errors="replace")
    line = f"  match: rule {d.rule_id} ({d.action}) {names}: {shown!r} at characters {c0}-{c1}"
    if isinstance(d, CheckedDetector) and d.check is not None:
        line += " (a whole number" + (")" if d.check.stateless else f"; {d.check.name} checksum passed)")
    if isinstance(d, PhraseDetector):
        modes = needed_modes(d, data[st:end], labels)
        line += " via " + (", ".join(modes) if modes else "the phrase as written (case, width and spaces folded)")
    return line + "\n    " + text.replace("\n", " ") + "\n    " + " " * c0 + "^" * max(1, c1 - c0)


def head_report(sr: SemanticRule, indent: str = "    ", label: str = "") -> list[str]:
    """A trained head: its size, how it was trained, its metrics and the threshold it runs at."""
    h, m, spec = sr.head, sr.head_metrics, sr.spec
    assert h is not None and m is not None
    chose = (f"threshold {m.threshold:g} chosen on the out-of-fold scores (threshold: auto, max_false_block "
             f"{spec.max_false_block:g})" if spec.threshold is None else f"threshold {m.threshold:g} (set)")
    feats = "the generating model's hidden states" if sr.fallback is not None else sr.encoder.name
    model = h.model + (f" (l2 {h.l2:g}, chosen by cross-validation)" if h.l2 is not None else "")
    out = [f"{indent}{label or sr.rule_id + '/semantic head'}: {model} on {feats} ({sr.encoder.dim} dims), "
           f"{h.size:,} parameters ({h.nbytes / 1024:.0f} KiB), "
           + ("loaded from the cache" if h.cache_hit else f"trained in {sr.embed_s:.1f} s (cached for the next start)"),
           f"{indent}  trained on {m.n} texts ({m.n_inadmissible} inadmissible) from {m.groups} sources; "
           f"in-sample AUROC {m.train_auroc:.3f}",
           f"{indent}  {m.folds}-fold cross-validation grouped by source: AUROC {m.cv_auroc:.3f}; at {m.threshold:g}: "
           f"blocks {m.cv_block_rate:.1%} of inadmissible texts, false-blocks {m.cv_false_block_rate:.1%}, "
           f"F1 {m.cv_f1:.3f}",
           f"{indent}  {chose}"]
    if not m.met:
        out.append(f"{indent}  warning: no threshold keeps cross-validated false blocks within "
                   f"{spec.max_false_block:.1%}; this one blocks the fewest; add admissible examples like those "
                   "it confuses")
    if label:
        return out
    out.append(f"{indent}  groups of {spec.min_group_tokens}-{spec.max_group_tokens} tokens, window {spec.window}, "
               f"{spec.max_retries} retries then {spec.fallback}, applies to {', '.join(spec.apply_to)}")
    if sr.fallback_note:
        out.append(f"{indent}  note: {sr.fallback_note}")
    if sr.fallback is not None:
        out.append(f"{indent}  features: the last hidden layer of {sr.encoder.version.split(':')[0]}, mean-pooled "
                   "over the group; in ingate's own loop on that model they are the states the engine computes "
                   "anyway (no encoder runs). Elsewhere (a remote upstream, vLLM, another model, a prompt) the "
                   "encoder twin below judges:")
        out += head_report(sr.fallback, indent + "  ", f"encoder twin ({sr.fallback.encoder.name})")
    return out


def policy_report(compiled: CompiledPolicy) -> list[str]:
    """The policy, each rule, and what each compiled into (automata sizes, folds, encoders): each
    kind describes its own (`RuleKind.describe`, `report`)."""
    policy = compiled.policy
    out = [f"policy {policy.name!r} ({policy.source}): valid, {len(policy.rules)} rule(s)"]
    out += [kind(r.kind).describe(r) for r in policy.rules]
    if (m := policy.mask) is not None:
        out.append(f"  mask_upstream: {', '.join(m.values)} become typed placeholders before the model sees the "
                   f"request; the answer's placeholders: {m.answer}; vault: per {m.vault}")
    for k in kinds():
        part = compiled.part(k.name)
        report = getattr(k, "report", None)
        if part is not None and report is not None:
            out += report(part)
    return out


def text_report(compiled: CompiledPolicy, text: str) -> list[str]:
    """What the policy would do to `text`, kind by kind (semantic scores, then every match)."""
    out: list[str] = []
    for k in sorted(kinds(), key=lambda k: k.name != "semantic"):
        part = compiled.part(k.name)
        report = getattr(k, "text_report", None)
        if part is not None and report is not None:
            out += report(part, text)
    return out
