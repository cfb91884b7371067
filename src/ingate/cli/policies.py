"""ingate check and ingate calibrate: a policy's report, and a semantic rule's threshold measured."""

from __future__ import annotations

import argparse
import json
import sys

from ingate.cli.common import UserError, load
from ingate.gate.kinds.semantic import SemanticRuleSpec
from ingate.policy import Policy, PolicyError, load_policy


def cmd_check(args: argparse.Namespace) -> int:
    from ingate.gate.compile import compile_policy
    from ingate.gate.explain import policy_report, text_report

    compiled = compile_policy(load(args.policy))
    for line in policy_report(compiled) + (text_report(compiled, args.text) if args.text is not None else []):
        print(line)
    return 0


def _semantic_rule(policy: Policy, wanted: str | None) -> SemanticRuleSpec:
    rules = policy.rules_of("semantic")
    ids = ", ".join(r.id for r in rules)
    if not rules:
        raise UserError(f"{policy.source}: policy {policy.name!r} has no semantic rule; calibrate measures the "
                        "threshold of a rule with semantic: (deny or allow_only concepts)", code=2)
    if wanted is None:
        if len(rules) > 1:
            raise UserError(f"{policy.source} has {len(rules)} semantic rules; pick one with --rule ({ids})", code=2)
        return rules[0]
    for r in rules:
        if r.id == wanted:
            return r
    other = " is not a semantic rule" if any(r.id == wanted for r in policy.rules) else " does not exist"
    raise UserError(f"--rule {wanted!r}{other} in {policy.source}; semantic rules: {ids}", code=2)


def _held_out(spec: SemanticRuleSpec, data: list[tuple[str, bool]], args: argparse.Namespace
              ) -> list[tuple[str, bool]]:
    """A head is measured only on texts it was not trained on: a file that repeats its training data
    (the same text, or a near duplicate) is refused, or with --drop-overlap thinned to what is new."""
    head = spec.semantic.head
    if head is None:
        return data
    from ingate.labelled import NEAR_DUPLICATE, overlap

    hits = overlap([r[0] for r in head.rows], [t for t, _ in data])
    if not hits:
        return data
    if not args.drop_overlap:
        ex = "; ".join(f"row {h.held_out + 1} {'repeats' if h.similarity == 1.0 else 'nearly repeats'} training "
                       f"text {h.train + 1} ({data[h.held_out][0][:60]!r})" for h in hits[:3])
        raise UserError(f"{args.labelled}: {len(hits)} of its {len(data)} texts overlap the training data of rule "
                        f"{spec.id} ({head.train}; exact after folding case and punctuation, or word n-gram cosine "
                        f">= {NEAR_DUPLICATE}), so it is not held out: {ex}. Measure on texts the head never saw, "
                        "or pass --drop-overlap to leave those out", code=2)
    drop = {h.held_out for h in hits}
    kept = [d for i, d in enumerate(data) if i not in drop]
    print(f"ingate calibrate: left out {len(drop)} of {len(data)} texts that overlap the head's training data",
          file=sys.stderr)
    n_ok = sum(a for _, a in kept)
    if n_ok in (0, len(kept)):
        raise UserError(f"{args.labelled}: after leaving out the overlap, {len(kept)} texts of one class remain; "
                        "AUROC needs both", code=2)
    return kept


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ingate.calibrate import CalibrationError, calibrate, plot_roc, read_labelled, roc_title

    try:
        policy = load_policy(args.policy)
    except PolicyError as e:
        raise UserError(str(e), code=2) from None
    spec = _semantic_rule(policy, args.rule)
    try:
        data = read_labelled(args.labelled)
    except CalibrationError as e:
        raise UserError(str(e), code=2) from None
    png = Path(args.png) if args.png else Path.cwd() / f"calibrate-{spec.id}.png"
    if not png.parent.is_dir():
        raise UserError(f"--png {str(png)!r}: directory {str(png.parent)!r} does not exist", code=2)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("calibrate draws its ROC curve with matplotlib, which is missing; install it with "
                        "`pip install 'ingate[semantic]'`") from None
    from ingate.semantic.concepts import compile_semantic

    try:
        rule = compile_semantic(policy.source, spec)
    except PolicyError as e:
        raise UserError(str(e)) from None  # the encoder cannot load here: an install problem, not bad input
    data = _held_out(spec, data, args)
    cal = calibrate(rule, data, args.max_false_block)
    try:
        plot_roc(cal.suggestion, png, roc_title(cal.rule, cal.mode, cal.encoder, cal.suggestion.auroc, cal.n))
    except OSError as e:
        raise UserError(f"--png {str(png)!r}: cannot write the ROC curve: {e}", code=2) from None
    png = png.resolve()
    if args.json:
        print(json.dumps(cal.to_json(str(png))))
    else:
        print("\n".join(cal.report(policy.source, args.labelled, str(png))))
    return 0
