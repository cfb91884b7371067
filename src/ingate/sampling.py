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
    """`measure`: record the entropy (nats) of the distribution each call samples from, in
    `entropy`: after bans and masks, temperature, top-k and top-p. Greedy decoding samples from a
    point mass, which says nothing; there the entropy is that of the masked distribution at
    temperature 1. `bound`: when that entropy exceeds it, sample only within the largest top set
    whose own entropy is within the bound (`narrowed` is its size; 0 when no narrowing happened).
    """

    def __init__(self, params: SamplingParams, measure: bool = False):
        self.params = params
        self.measure = measure
        self.entropy = float("nan")
        self.narrowed = 0
        self._rng = np.random.default_rng(params.seed)

    def peek(self, logits: np.ndarray) -> int:
        """The token `sample` would pick now without a mask, leaving the generator as it was: what
        an engine's own draw would have been, had nothing been masked."""
        state = self._rng.bit_generator.state
        try:
            return self.sample(logits)
        finally:
            self._rng.bit_generator.state = state

    def sample(self, logits: np.ndarray, banned: np.ndarray | None = None, bound: float | None = None) -> int:
        """Pick a token. `banned` (bool per token, or an index array) is removed before choosing.

        `logits` is not modified. Returns -1 when every token is banned.
        """
        p = self.params
        u = self._rng.random()  # always one draw per call: keeps seeded runs aligned
        self.narrowed = 0
        if banned is not None:
            logits = logits.copy()
            logits[banned] = -np.inf
        if p.temperature == 0.0:
            tok = int(np.argmax(logits))
            if self.measure or bound is not None:
                z = logits - logits[tok]
                if banned is None:  # the engine's logits are finite: skip the masking passes
                    w, fin = np.exp(z), None
                else:
                    fin = np.isfinite(z)
                    w = np.exp(z, where=fin, out=np.zeros_like(z))
                self.entropy = _entropy(w, z, fin)
                if bound is not None and self.entropy > bound:  # the argmax lies in every top set
                    self.narrowed = _narrow(w, bound).shape[0]
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
        chosen = _nucleus(probs, p.top_p) if p.top_p < 1.0 else None  # computed once, for both uses
        if self.measure or bound is not None:
            if chosen is not None:
                self.entropy = _entropy(probs[chosen], z[chosen])
            else:
                self.entropy = _entropy(probs, z, None if banned is None else finite)
            if bound is not None and self.entropy > bound:
                w = probs[chosen] if chosen is not None else probs
                keep = _narrow(w, bound)  # indices into w, most probable first
                self.narrowed = keep.shape[0]
                c = np.cumsum(w[keep])
                j = int(np.searchsorted(c, u * c[-1], side="right"))
                k = int(keep[min(j, keep.shape[0] - 1)])
                tok_local = int(chosen[k]) if chosen is not None else k
                return int(idx[tok_local]) if idx is not None else tok_local
        if chosen is not None:
            w = np.cumsum(probs[chosen])
            j = int(np.searchsorted(w, u * w[-1], side="right"))
            tok_local = int(chosen[min(j, chosen.shape[0] - 1)])
        else:
            c = np.cumsum(probs)
            j = int(np.searchsorted(c, u * c[-1], side="right"))
            tok_local = min(j, c.shape[0] - 1)
        return int(idx[tok_local]) if idx is not None else tok_local


def _entropy(w: np.ndarray, z: np.ndarray, finite: np.ndarray | None = None) -> float:
    """Entropy in nats of the distribution proportional to w = exp(z), without normalizing w:
    H = log S - sum(w z) / S. One pass of a dot product over the candidates."""
    s = float(w.sum())
    if s <= 0.0:
        return float("nan")
    zf = z if finite is None else np.where(finite, z, 0.0)
    h = float(np.log(s) - float(w @ zf) / s)
    if h != h and finite is None:  # an engine that gives -inf logits of its own: mask them
        return _entropy(w, z, np.isfinite(z))
    return max(0.0, h)


def _narrow(w: np.ndarray, bound: float) -> np.ndarray:
    """The largest top set (most probable first) whose renormalized entropy is within `bound`.

    The entropy of the top-k set, H_k = log S_k - A_k / S_k with S_k and A_k the running sums of
    w and w log w, is evaluated for every k at once. The top 1,024 are tried before a full sort.
    """
    n = w.shape[0]
    for k in (1024, n):
        if k >= n:
            top = np.argsort(-w, kind="stable")
        else:
            top = np.argpartition(-w, k)[:k]
            top = top[np.argsort(-w[top], kind="stable")]
        ws = w[top]
        pos = ws > 0
        ws, top = ws[pos], top[pos]
        s = np.cumsum(ws)
        a = np.cumsum(ws * np.log(ws))
        h = np.log(s) - a / s
        ok = np.nonzero(h <= bound + 1e-12)[0]
        last = int(ok[-1]) + 1 if ok.size else 1
        if last < ws.shape[0] or k >= n:
            return top[:last]
    raise AssertionError("unreachable")


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest top set holding top_p of the mass, most probable first.

    A full argsort of a 49k vocabulary costs milliseconds; the nucleus is usually a few dozen
    tokens, so look among the top 64, then 1,024, before sorting everything.
    """
    target = top_p * float(probs.sum(dtype=np.float64))  # float64: a float32 running sum over a
    # whole vocabulary drifts by ~1e-6, enough to move the cut by a token
    n = probs.shape[0]
    for k in (64, 1024, n):
        if k >= n:
            top = np.argsort(-probs, kind="stable")
        else:
            top = np.argpartition(-probs, k)[:k]
            top = top[np.argsort(-probs[top], kind="stable")]
        cum = np.cumsum(probs[top], dtype=np.float64)
        if cum[-1] >= target or k >= n:
            keep = int(np.searchsorted(cum, target)) + 1
            return top[: min(keep, top.shape[0])]
    raise AssertionError("unreachable")
