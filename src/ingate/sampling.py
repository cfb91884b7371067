"""Seeded sampling with temperature, top-k and top-p, and masks that bite only when they must.

`sample` draws exactly one uniform number per call, so two runs with the same seed that take
the same path draw the same numbers. The gate uses this to stay transparent (invariant 4): it
asks for a masked resample only when the unmasked choice is inadmissible. Conditional on that,
the resample comes from the masked distribution, so the token actually admitted is distributed
exactly as if the mask had been applied first (rejection sampling), and no inadmissible token
ever reaches the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, banned: np.ndarray | None = None) -> int:
        """Pick a token. `banned` (bool per token, or an index array) is removed before choosing.

        `logits` is not modified. Returns -1 when every token is banned.
        """
        p = self.params
        u = self._rng.random()  # always one draw per call: keeps seeded runs aligned
        if banned is not None:
            logits = logits.copy()
            logits[banned] = -np.inf
        if p.temperature == 0.0:
            tok = int(np.argmax(logits))
            return tok if np.isfinite(logits[tok]) else -1
        k = p.top_k if 0 < p.top_k < logits.shape[0] else 0
        if k:
            idx = np.argpartition(logits, -k)[-k:]
            cand = logits[idx]
        else:
            idx = None
            cand = logits
        finite = np.isfinite(cand)
        if not finite.any():
            return -1
        z = (cand - cand[finite].max()) / p.temperature
        probs = np.exp(z, where=finite, out=np.zeros_like(z))
        if p.top_p < 1.0:
            chosen = _nucleus(probs, p.top_p)
            w = np.cumsum(probs[chosen])
            j = int(np.searchsorted(w, u * w[-1], side="right"))
            tok_local = int(chosen[min(j, chosen.shape[0] - 1)])
        else:
            c = np.cumsum(probs)
            j = int(np.searchsorted(c, u * c[-1], side="right"))
            tok_local = min(j, c.shape[0] - 1)
        return int(idx[tok_local]) if idx is not None else tok_local


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest top set holding top_p of the mass, most probable first.

    A full argsort of a 49k vocabulary costs milliseconds; the nucleus is usually a few dozen
    tokens, so look among the top 64, then 1,024, before sorting everything.
    """
    target = top_p * float(probs.sum())
    n = probs.shape[0]
    for k in (64, 1024, n):
        if k >= n:
            top = np.argsort(-probs, kind="stable")
        else:
            top = np.argpartition(-probs, k)[:k]
            top = top[np.argsort(-probs[top], kind="stable")]
        cum = np.cumsum(probs[top])
        if cum[-1] >= target or k >= n:
            keep = int(np.searchsorted(cum, target)) + 1
            return top[: min(keep, top.shape[0])]
    raise AssertionError("unreachable")
