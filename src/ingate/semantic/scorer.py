"""Scoring off the generation thread.

One process-wide worker thread encodes group texts and judges them against the semantic rules,
so the encoder (one torch thread) runs on one core while llama.cpp decodes on the other. The
loop never waits for it until a verdict is due; release always waits for the verdict.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ingate.semantic.concepts import Score, SemanticRule

_EXECUTOR: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Judgement:
    scores: tuple[Score, ...]
    elapsed_ms: float
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # encoder -> the text's own embedding
    weight: int = 0  # tokens in the text: its weight when pooled into a later group's window

    @property
    def rejected(self) -> Score | None:
        """The first rule (in policy order) that finds the text inadmissible."""
        return next((s for s in self.scores if s.inadmissible), None)


def judge(rules: Sequence[SemanticRule], views: Sequence[str]) -> Judgement:
    """Encode each view of one text once per encoder and judge it against every rule."""
    t = time.perf_counter()
    vectors: dict[str, np.ndarray] = {}
    scores: list[Score] = []
    for rule in rules:
        r = rule.judged_by(None)  # a text alone: an engine head's encoder twin judges it
        v = vectors.get(r.encoder.name)
        if v is None:
            v = vectors[r.encoder.name] = r.encoder.encode(views)
        scores.append(r.judge(v[:1] if r.head is not None else v))  # a head: the text as a whole
    return Judgement(tuple(scores), (time.perf_counter() - t) * 1000)


def judge_group(rules: Sequence[SemanticRule], text: str, weight: int,
                window: Sequence[Future[Judgement]], engine: tuple[str, np.ndarray] | None = None) -> Judgement:
    """A group alone, and pooled with the groups before it: two views, one encoder pass.

    `engine`: (feature id, vector), the generating model's own hidden states pooled over the group;
    a head trained on that model's states uses it and runs no encoder at all. Without it (or for
    another model) such a rule is judged by its encoder twin.

    The window view is the token-weighted mean of the group's embedding and its predecessors'
    (already computed: the worker runs jobs in order), so content split across sentences is seen
    together without encoding the window's text again. Mean pooling over a concatenation is close
    to this (cosine 0.85-0.95 on our checks) and costs a third of the encoder time.
    """
    t = time.perf_counter()
    prev = [f.result() for f in window]
    own: dict[str, np.ndarray] = {}
    if engine is not None:
        own[engine[0]] = engine[1]
    scores: list[Score] = []
    for rule in rules:
        r = rule.judged_by(engine[0] if engine is not None else None)
        name = r.encoder.version if r.fallback is not None else r.encoder.name
        v = own.get(name)
        if v is None:
            v = own[name] = r.encoder.encode([text])[0]
        views = v[None, :]
        parts = [(p.vectors[name], p.weight) for p in prev if name in p.vectors]
        if parts:
            pooled = v * weight + sum(vec * w for vec, w in parts)
            pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
            # a head judges the response so far (the unit it was trained on); similarity, each view
            views = pooled[None, :] if r.head is not None else np.vstack([views, pooled])
        scores.append(r.judge(views))
    return Judgement(tuple(scores), (time.perf_counter() - t) * 1000, own, weight)


def submit(rules: Sequence[SemanticRule], text: str, weight: int,
           window: Sequence[Future[Judgement]] = (), engine: tuple[str, np.ndarray] | None = None
           ) -> Future[Judgement]:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingate-score")
    return _EXECUTOR.submit(judge_group, tuple(rules), text, weight, tuple(window), engine)


def prompt_views(text: str, limit: int = 32) -> list[str]:
    """The prompt as a whole and sentence by sentence (a request hidden in one sentence of a long
    prompt is still caught). Empty parts are dropped; at most `limit` views."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;:\n])\s+", text)]
    views = [text.strip()] + [p for p in parts if p and p != text.strip()]
    return [v for v in views if v][:limit]


def screen(rules: Sequence[SemanticRule], text: str) -> Judgement | None:
    """Judge a prompt before any generation; None when there is nothing to judge."""
    views = prompt_views(text)
    if not rules or not views:
        return None
    return judge(rules, views)
