"""Semantic rules as a check: the stream is cut into token groups, each judged off-thread; an open or
unjudged group is held back like a partial match, and a rejected one is regenerated or ends the
stream (`semantic/groups.py` keeps the groups, `semantic/scorer.py` judges them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.semantic.concepts import SemanticRule
from ingate.semantic.groups import Groups


class SemanticCheck(Check):
    rule_id = "semantic"

    def __init__(self, rules: Sequence[SemanticRule], lag: int, steer_penalty: float):
        self.groups = Groups(rules, lag)
        self.steer_penalty = steer_penalty  # 0: the rolled-back group's first token is banned, nothing more
        self._rejected = (0, 0)  # token span of the last rejected group

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        self.groups.after_token(s.raw, s.tok_start, data)
        return None

    def hold(self, s: Stream, exact: bool) -> int | None:
        return self.groups.approved  # an open or unjudged group is one more undecided suffix

    def rollback(self, s: Stream, k: int) -> None:
        self.groups.on_rollback(k, s.tok_start)

    def due(self, s: Stream, final: bool, can_rollback: bool) -> Finding | None:
        """The first rejection that is due; admissions on the way are applied. With `final` the open
        group is closed first and every verdict waited for, so every byte is judged before release."""
        gr = self.groups
        if final and gr.open_tok < len(s):
            gr.close(s.raw, s.tok_start)
        while (nv := gr.next_verdict(len(s), block=final)) is not None:
            g, v = nv
            bad = v.rejected if v is not None else None
            if v is None or bad is None:
                gr.admit_head(v)
                continue
            rule = next(r for r in gr.rules if r.rule_id == bad.rule_id)
            g, n = gr.reject_head(v)
            self._rejected = (g.start_tok, g.end_tok)
            return Finding(Kind.REJECT, rule.rule_id, g.start, g.end,
                           f"semantic: group of {g.end_tok - g.start_tok} token(s) {rule.explain(bad)}",
                           action=rule.action or "stop", epilogue=rule.spec.refusal or "", tok=g.start_tok,
                           retry=rule.action == "resample" and n <= rule.spec.max_retries, attempt=n,
                           retries=rule.spec.max_retries, source=self)
        return None

    def regenerating(self, s: Stream) -> None:
        """The gate takes the last rejected group back to regenerate it: steer away from its content."""
        gr = self.groups
        k, end = self._rejected
        gr.stats.retried += 1
        prev = gr.steer[1] if gr.steer and gr.steer[0] == k else None
        gr.steer = (k, _content_tokens(s, s.tokens[k:end], prev))

    def bias(self, logits: np.ndarray, position: int) -> np.ndarray:
        toks = self.groups.steer_at(position)
        if toks is None or not toks.size or not self.steer_penalty:
            return logits
        out = logits.copy()
        out[toks] -= self.steer_penalty
        return out


def _content_tokens(s: Stream, tokens: list[int], prev: np.ndarray | None) -> np.ndarray:
    """Tokens of a rejected attempt that carry content (3+ letters): penalized in its replacement."""
    keep = {t for t in tokens if t >= 0 and sum(c.isalpha() for c in s.token_bytes[t].decode("utf-8", "ignore")) >= 3}
    if prev is not None:
        keep.update(prev.tolist())
    return np.fromiter(keep, dtype=np.int64, count=len(keep))
