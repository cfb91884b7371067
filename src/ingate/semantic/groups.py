"""Token groups of one stream: where they end, their pending verdicts, and retries.

A group is a run of tokens ending at a sentence or clause boundary (after at least
`min_group_tokens`) or after `max_group_tokens`. While a group is open or its verdict is
pending it is held back, exactly like a partial pattern match: `approved` is the byte offset
below which every group has been judged admissible, and the gate never releases past it.

A verdict is scored off-thread while generation goes on. It is applied at a fixed point, `lag`
tokens after the group closed (or earlier, when it admits), so the tokens sampled are the same
whatever the scorer's timing: a seeded governed run stays reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ingate.semantic import scorer
from ingate.semantic.concepts import SemanticRule
from ingate.semantic.engine_features import pool
from ingate.semantic.scorer import Judgement
from ingate.sentences import end_after


def ends_clause(data: bytes) -> bool:
    return end_after(data, clauses=True) is not None


@dataclass
class Group:
    start_tok: int
    end_tok: int  # exclusive
    start: int  # raw byte offsets
    end: int
    future: Future[Judgement] | None  # None: only whitespace, nothing to judge
    due: int  # the position at which the verdict must be applied
    closed_at: float


@dataclass
class GroupStats:
    scored: int = 0
    rejected: int = 0
    retried: int = 0  # rolled-back groups that were regenerated
    retry_admitted: int = 0  # ...whose regeneration was admitted
    score_ms: list[float] = field(default_factory=list)  # encoder time per group
    hold_ms: list[float] = field(default_factory=list)  # group closed -> verdict applied
    group_tokens: list[int] = field(default_factory=list)  # length of each judged group
    engine_groups: int = 0  # groups sent with the engine's own hidden states (no encoder needed for them)
    max_score: dict[str, float] = field(default_factory=dict)  # per rule, over admitted groups

    def to_dict(self) -> dict:
        def pct(xs: list[float], q: float) -> float | None:
            return round(float(np.percentile(xs, q)), 1) if xs else None

        return {"groups": self.scored, "rejected": self.rejected, "retried": self.retried,
                "retry_admitted": self.retry_admitted, "engine_groups": self.engine_groups,
                "score_ms_p50": pct(self.score_ms, 50), "score_ms_p99": pct(self.score_ms, 99),
                "hold_ms_p50": pct(self.hold_ms, 50), "hold_ms_p99": pct(self.hold_ms, 99),
                "max_score": {k: round(v, 3) for k, v in self.max_score.items()}}


class Groups:
    def __init__(self, rules: Sequence[SemanticRule], lag: int = 3):
        self.rules = list(rules)
        self.min_tokens = min(r.spec.min_group_tokens for r in self.rules)
        self.max_tokens = min(r.spec.max_group_tokens for r in self.rules)
        self.window = max(r.spec.window for r in self.rules)
        self.lag = lag
        self.open_tok = 0  # first token of the open group
        self.approved_tok = 0
        self.approved = 0  # raw byte offset below which every group is admitted
        self.pending: list[Group] = []
        self.recent: list[tuple[int, Future[Judgement]]] = []  # (byte start, job) of scored groups: the window
        self.retries: dict[int, int] = {}  # group start position -> rejections there
        self.steer: tuple[int, np.ndarray] | None = None  # (position, tokens to penalize there)
        self.admitted: list[tuple[int, int]] = []  # byte spans of admitted groups, in order
        self.stats = GroupStats()
        # the generating model's hidden state that predicted each token (when a head reads them):
        # hidden[i] is known before token i is drawn, so a closing group's states are all there
        self.wants_hidden = any(r.fallback is not None for r in self.rules)
        self.hidden: list[np.ndarray | None] = []
        self.hidden_id: str | None = None

    def observe(self, position: int, feature_id: str, vec: np.ndarray | None) -> None:
        """The hidden state the engine computed at `position` (the one predicting the next token);
        None where the engine has none (the prompt's end, evaluated as a batch)."""
        del self.hidden[position:]
        if len(self.hidden) == position:
            self.hidden.append(vec)
            self.hidden_id = feature_id

    def _engine_vector(self, start_tok: int, end_tok: int) -> tuple[str, np.ndarray] | None:
        if self.hidden_id is None or len(self.hidden) < end_tok:
            return None
        states = [h for h in self.hidden[start_tok:end_tok] if h is not None]
        return (self.hidden_id, pool(np.stack(states))) if states else None

    # ---- building groups --------------------------------------------------------------------
    def after_token(self, raw: bytearray, tok_start: list[int], data: bytes) -> None:
        n = len(tok_start) - self.open_tok
        if n >= self.max_tokens or (n >= self.min_tokens and ends_clause(data)):
            self.close(raw, tok_start)

    def close(self, raw: bytearray, tok_start: list[int]) -> None:
        """End the open group at the current end of the text and send it to be judged."""
        n_tok = len(tok_start)
        if n_tok == self.open_tok:
            return
        start, end = tok_start[self.open_tok], len(raw)
        text = bytes(raw[start:end]).decode("utf-8", errors="replace")
        future = None
        if text.strip():
            window = [f for _, f in self.recent[-self.window:]] if self.window else []
            engine = self._engine_vector(self.open_tok, n_tok)
            self.stats.engine_groups += engine is not None
            future = scorer.submit(self.rules, text, n_tok - self.open_tok, window, engine)
            self.recent.append((start, future))
            del self.recent[:-max(self.window, 1)]
        self.pending.append(Group(self.open_tok, n_tok, start, end, future, n_tok + self.lag,
                                  time.perf_counter()))
        self.open_tok = n_tok  # steering (steer_at) lasts while the regenerated group is open

    # ---- verdicts -----------------------------------------------------------------------------
    def next_verdict(self, position: int, block: bool) -> tuple[Group, Judgement | None] | None:
        """The head group and its verdict, if it may be applied now; None to keep generating."""
        if not self.pending:
            return None
        g = self.pending[0]
        if g.future is None:
            return g, None
        if g.future.done():
            v = g.future.result()
            # an admission changes no token choice, so it applies at once; a rejection waits
            # for its due point, so that what is sampled never depends on the scorer's timing
            if v.rejected is None or block or position >= g.due:
                return g, v
            return None
        if block or position >= g.due:
            return g, g.future.result()
        return None

    def admit_head(self, v: Judgement | None) -> None:
        g = self.pending.pop(0)
        self.approved, self.approved_tok = g.end, g.end_tok
        self.admitted.append((g.start, g.end))
        self._account(g, v)
        if g.start_tok in self.retries:
            del self.retries[g.start_tok]
            self.stats.retry_admitted += 1
        if self.steer is not None and self.steer[0] <= g.start_tok:
            self.steer = None

    def reject_head(self, v: Judgement) -> tuple[Group, int]:
        """Count a rejection of the head group; returns it and how often its position was rejected."""
        g = self.pending[0]
        self._account(g, v)
        self.stats.rejected += 1
        n = self.retries.get(g.start_tok, 0) + 1
        self.retries[g.start_tok] = n
        return g, n

    def _account(self, g: Group, v: Judgement | None) -> None:
        self.stats.hold_ms.append((time.perf_counter() - g.closed_at) * 1000)
        self.stats.group_tokens.append(g.end_tok - g.start_tok)
        if v is None:
            return
        self.stats.scored += 1
        self.stats.score_ms.append(v.elapsed_ms)
        for s in v.scores:
            if not s.inadmissible:
                self.stats.max_score[s.rule_id] = max(self.stats.max_score.get(s.rule_id, -1.0), s.score)

    # ---- rollback -----------------------------------------------------------------------------
    def on_rollback(self, k: int, tok_start: list[int]) -> None:
        """The stream was cut back to k tokens: groups that reached past k are void."""
        keep: list[Group] = []
        for g in self.pending:
            if g.end_tok <= k:
                keep.append(g)
            elif g.future is not None:
                g.future.cancel()
        self.pending = keep
        del self.hidden[k:]
        if self.approved_tok > k:  # a pattern rollback may reach below approved, unreleased text
            self.approved_tok, self.approved = k, tok_start[k]
            self.admitted = [(a, min(b, self.approved)) for a, b in self.admitted if a < self.approved]
        self.open_tok = keep[-1].end_tok if keep else self.approved_tok
        open_start = tok_start[self.open_tok] if self.open_tok < len(tok_start) else None
        if open_start is not None:
            self.recent = [(s, f) for s, f in self.recent if s < open_start]
        self.retries = {p: n for p, n in self.retries.items() if p <= k}
        if self.steer is not None and self.steer[0] > k:
            self.steer = None

    def steer_at(self, position: int) -> np.ndarray | None:
        """Tokens to penalize at this position: those of the rejected attempts at the open group."""
        if self.steer is not None and self.steer[0] == self.open_tok and position >= self.open_tok:
            return self.steer[1]
        return None
