"""Rule kinds, each behind one protocol (`base.Check`): forbidden language (`forbid`), semantic
groups (`semantic`) and the entropy budget (`entropy`). A new rule kind is one new module here
and one line in `checks_for`."""

from __future__ import annotations

from collections.abc import Sequence

from ingate.gate.compile import CompiledPolicy, stop_sequences
from ingate.gate.kinds.base import Check
from ingate.gate.kinds.entropy import EntropyCheck
from ingate.gate.kinds.forbid import ForbidCheck
from ingate.gate.kinds.semantic import SemanticCheck


def checks_for(compiled: CompiledPolicy, stop: Sequence[str], semantic_lag: int, steer_penalty: float,
               session_entropy: float) -> list[Check]:
    """One stream's checks, in the order they step: forbidden language first (it may refuse a token)."""
    dets = compiled.detectors + ([stop_sequences(stop)] if stop else [])
    out: list[Check] = [ForbidCheck(d, i) for i, d in enumerate(dets)]
    if compiled.semantic_output:
        out.append(SemanticCheck(compiled.semantic_output, semantic_lag, steer_penalty))
    rule = compiled.policy.entropy_rule
    if rule is not None:
        out.append(EntropyCheck(rule.id, rule.entropy, session_entropy))
    return out
