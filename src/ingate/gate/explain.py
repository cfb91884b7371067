"""What `ingate check` reports: the compiled policy (`policy_report`), and with --text every
match, where it is in the original text and which of the rule's folds it took (`text_report`),
so a surprising match can be traced to its mode. The CLI only prints these lines."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ingate.gate.compile import CompiledPolicy
from ingate.gate.detector import CheckedDetector, Match, PatternDetector, PhraseDetector, compile_phrase_detector
from ingate.policy import EntropyRuleSpec, ForbidSpec, RuleSpec, SemanticRuleSpec

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


def describe(d: PatternDetector, text: str, m: Match) -> str:
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


def _rule_line(r: RuleSpec) -> str:
    match r:
        case EntropyRuleSpec():
            return _entropy_line(r)
        case SemanticRuleSpec(semantic=sem) if sem.head is not None:
            what = [f"semantic head ({sem.head.model}, features {sem.head.features}) trained on "
                    f"{len(sem.head.rows)} labelled texts from {sem.head.train}"]
        case SemanticRuleSpec(semantic=sem):
            what = [f"semantic {sem.mode} " + ", ".join(f"{c.name} ({len(c.examples)} examples)"
                                                        for c in sem.concepts)]
        case ForbidSpec():
            what = []
            if r.phrases:
                what.append(f"{len(r.phrases)} phrase(s)" + (" case-sensitive" if r.case_sensitive else ""))
            if r.patterns:
                what.append("patterns " + ", ".join(r.patterns))
            if r.regex:
                what.append(f"{len(r.regex)} regex")
    return f"  - {r.id}: {r.action} on {'; '.join(what)}"


def _entropy_line(r: EntropyRuleSpec) -> str:
    e = r.entropy
    parts = []
    if e.max_token_entropy is not None:
        parts.append(f"bound {e.max_token_entropy:g} nats/token" + (" (narrow)" if e.narrow else " (reported)"))
    if e.budget is not None:
        parts.append(f"response budget {e.budget:g}")
    if e.session_budget is not None:
        parts.append(f"session budget {e.session_budget:g}")
    parts.append(f"excess over baseline {e.baseline:g}")
    return (f"  - {r.id}: entropy " + ", ".join(parts)
            + (f"; {r.action} at the next sentence end when a budget is spent" if r.action else ""))


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
    """The policy, each rule, and what each compiled into (automata sizes, folds, encoders)."""
    policy = compiled.policy
    out = [f"policy {policy.name!r} ({policy.source}): valid, {len(policy.rules)} rule(s)"]
    out += [_rule_line(r) for r in policy.rules]
    for d in compiled.detectors:
        extra = f", mask states {len(d.search.accept)}" if d.rolls_back else ""
        fold = getattr(d, "fold", None)
        extra += f"; {fold.describe()}" if fold is not None else ""
        out.append(f"    {d.rule_id}/{d.kind}: {len(d.dfa.trans)} DFA states{extra}")
    for sr in compiled.semantic:
        spec = sr.spec
        if sr.head is not None:
            out += head_report(sr)
            continue
        thr = (f"threshold {sr.threshold:g}" if sr.calibrated else
               f"threshold {sr.threshold:g} (no threshold set: the uncalibrated default; "
               "run `ingate calibrate` to measure one)")
        out.append(f"    {sr.rule_id}/semantic: {sr.encoder.name}, {sr.n_examples} example embeddings "
                   f"({'from the cache' if sr.cache_hit else f'embedded in {sr.embed_s:.1f} s'}), {thr}; "
                   f"groups of {spec.min_group_tokens}-{spec.max_group_tokens} tokens, window {spec.window}, "
                   f"{spec.max_retries} retries then {spec.fallback}, applies to {', '.join(spec.apply_to)}")
    return out


def text_report(compiled: CompiledPolicy, text: str) -> list[str]:
    """What the policy would do to `text`: semantic scores, then every match, in rule order."""
    out = []
    if compiled.semantic:
        from ingate.semantic.scorer import screen

        v = screen(compiled.semantic, text)
        for sc in (v.scores if v is not None else ()):
            verdict = "INADMISSIBLE" if sc.inadmissible else "admissible"
            what = "as P(inadmissible) by its head" if sc.concept == "head" else f"(concept {sc.concept!r})"
            out.append(f"  semantic: rule {sc.rule_id} scored {sc.score:.3f} {what}: {verdict}")
    data = text.encode("utf-8")
    for d in compiled.detectors:
        out += [describe(d, text, m) for m in d.matches(data)]
    return out
