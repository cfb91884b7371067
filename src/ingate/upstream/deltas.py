"""From an upstream's stream chunks to the text deltas the gate reads, with entropy when it can.

A chat chunk carries `choices[0].delta.content`, a completion chunk `choices[0].text`. When the
upstream sent `logprobs` for the chunk's tokens and they spell the delta exactly, the delta is
split into one piece per token, each with the entropy estimated from its top logprobs.

The estimate (`top_k_entropy`) sums -p log p over the k alternatives the upstream sent, and adds
-r log p_min for the mass r = 1 - sum(p) they leave: every token outside the top k is at most as
likely as the least of them, p_min, so each contributes -p log p >= -p log p_min. The estimate is a
lower bound of the true entropy, and the tightest one those numbers allow without assuming how the
rest is spread. bench/upstream_entropy.py measures its error against the exact entropy on the
embedded model; docs/upstreams.md quotes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from ingate.drivers.text import Delta


def top_k_entropy(logprobs: Iterable[float | None]) -> float:
    """Entropy (nats) estimated from the top-k logprobs of one step."""
    ps = [math.exp(lp) for lp in logprobs if isinstance(lp, int | float) and math.isfinite(lp)]
    if not ps:
        return math.nan
    h = -sum(p * math.log(p) for p in ps if p > 0)
    r, least = 1.0 - sum(ps), min(ps)
    return h - r * math.log(least) if r > 1e-12 and least > 0 else h


def deltas(chunks: Iterable[dict[str, Any]], measured: bool) -> Iterator[Delta]:
    """The deltas of a chat or completion stream (choice 0), split per token where `measured`."""
    for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            continue  # a usage chunk, a keepalive
        c = choices[0]
        delta = c.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else c.get("text")
        if not isinstance(text, str) or not text:
            continue
        pieces = _per_token(c.get("logprobs"), text) if measured else None
        if pieces is None:
            yield Delta(text)
        else:
            yield from pieces


def _per_token(lp: Any, text: str) -> list[Delta] | None:
    """One Delta per token with its entropy, or None when the logprobs do not spell `text`."""
    if not isinstance(lp, dict):
        return None
    if isinstance(lp.get("content"), list):  # chat: [{token, logprob, top_logprobs: [{token, logprob, bytes}]}]
        items = [e for e in lp["content"] if isinstance(e, dict)]
        toks = [e.get("token") for e in items]
        chosen = [e.get("logprob") for e in items]
        tops = [[(_text(a), a.get("logprob")) for a in e.get("top_logprobs") or [] if isinstance(a, dict)]
                for e in items]
    elif isinstance(lp.get("tokens"), list):  # completions: tokens, token_logprobs, top_logprobs: [{token: lp}]
        toks, chosen = lp["tokens"], lp.get("token_logprobs") or []
        tops = [[(k.encode(), v) for k, v in d.items()] if isinstance(d, dict) else []
                for d in lp.get("top_logprobs") or []]
    else:
        return None
    strs = [t for t in toks if isinstance(t, str)]
    if not strs or len(strs) != len(toks) or len(tops) != len(toks) or "".join(strs) != text:
        return None
    out = []
    for i, t in enumerate(strs):
        top = tuple((b, float(v)) for b, v in tops[i] if isinstance(b, bytes) and isinstance(v, int | float))
        c = chosen[i] if i < len(chosen) else None
        if t:
            out.append(Delta(t, top_k_entropy(v for _, v in top), float(c) if isinstance(c, int | float) else math.nan,
                             top))
    return out


def _text(alt: dict) -> bytes | None:
    """An alternative's bytes: its `bytes` when sent (a token may be part of a character), else its text."""
    b = alt.get("bytes")
    if isinstance(b, list) and all(isinstance(x, int) and 0 <= x < 256 for x in b):
        return bytes(b)
    t = alt.get("token")
    return t.encode() if isinstance(t, str) else None
