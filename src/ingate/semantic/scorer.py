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
from dataclasses import dataclass

import numpy as np

from ingate.semantic.concepts import Score, SemanticRule

_EXECUTOR: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Verdict:
    scores: tuple[Score, ...]
    elapsed_ms: float

    @property
    def rejected(self) -> Score | None:
        """The first rule (in policy order) that finds the text inadmissible."""
        return next((s for s in self.scores if s.inadmissible), None)


def judge(rules: Sequence[SemanticRule], views: Sequence[str]) -> Verdict:
    """Encode each view of one text once per encoder and judge it against every rule."""
    t = time.perf_counter()
    vectors: dict[str, np.ndarray] = {}
    scores: list[Score] = []
    for r in rules:
        v = vectors.get(r.encoder.name)
        if v is None:
            v = vectors[r.encoder.name] = r.encoder.encode(views)
        scores.append(r.judge(v))
    return Verdict(tuple(scores), (time.perf_counter() - t) * 1000)


def submit(rules: Sequence[SemanticRule], views: Sequence[str]) -> Future[Verdict]:
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingate-score")
    return _EXECUTOR.submit(judge, tuple(rules), tuple(views))


def prompt_views(text: str, limit: int = 32) -> list[str]:
    """The prompt as a whole and sentence by sentence (a request hidden in one sentence of a long
    prompt is still caught). Empty parts are dropped; at most `limit` views."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;:\n])\s+", text)]
    views = [text.strip()] + [p for p in parts if p and p != text.strip()]
    return [v for v in views if v][:limit]


def screen(rules: Sequence[SemanticRule], text: str) -> Verdict | None:
    """Judge a prompt before any generation; None when there is nothing to judge."""
    views = prompt_views(text)
    if not rules or not views:
        return None
    return judge(rules, views)
