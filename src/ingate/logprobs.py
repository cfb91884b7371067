"""Log-probabilities that cannot leak what governance withheld.

Only tokens released whole get an entry; tokens inside a redaction share one entry for the
placeholder (logprob 0.0, no alternatives); an alternative is shown only if its text, at that
position, could not begin, continue or complete a governed match (`Gate.could_reveal`).
Values are from the model's raw distribution (temperature 1, before masks); an upstream's are
what it sent. A token is what the stream appended at once: a sampled token, or an upstream's
streamed token (alternatives are then its texts, not ids). A token with no record (the text an
upstream withdrawal kept of a cut token) gets no entry.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

import numpy as np

from ingate.gate.gate import Gate
from ingate.holdback import Span

# chosen logprob, [(alternative: token id, or its bytes from an upstream, logprob)]
Recorded = tuple[float, list[tuple[int | bytes, float]]]


def record(logits: np.ndarray, token: int, top: int) -> Recorded:
    x = logits.astype(np.float64)
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m).sum()))
    alts: list[tuple[int | bytes, float]] = []
    if top > 0:
        idx = np.argpartition(-x, top)[:top]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        alts = [(int(i), float(x[i]) - lse) for i in idx]
    return float(x[token]) - lse, alts


def _entry(text: bytes, logprob: float) -> dict:
    return {"token": text.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(text)}


def released_tokens(gate: Gate) -> list[tuple[int, Span | None]]:
    """(token index, redaction span or None) for every token released whole, in order.

    Tokens inside one redaction share its span: the client saw the placeholder, not them.
    """
    out: list[tuple[int, Span | None]] = []
    spans = iter(gate.redactions.redacted)
    sp = next(spans, None)
    for k, st in enumerate(gate.tok_start):
        end = gate.s.token_end(k)
        if end > gate.hold.released:
            break
        while sp is not None and sp.end <= st:
            sp = next(spans, None)
        out.append((k, sp if sp is not None and sp.start < end else None))
    return out


def released_entropies(gate: Gate) -> list[tuple[str, float | None]]:
    """(text, entropy) for what the client was shown, aligned with `entries`: one pair per token
    released whole, (placeholder, None) for a redaction. A character split across tokens is
    given to the token that completes it."""
    out: list[tuple[str, float | None]] = []
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    last_span = None
    for k, span in released_tokens(gate):
        if k >= len(gate.entropies):
            break
        if span is not None:
            if span is not last_span:
                out.append((dec.decode(b"", final=True) + span.placeholder, None))
                last_span = span
            continue
        h = gate.entropies[k]
        out.append((dec.decode(_piece(gate, k)), round(h, 4) if h == h else None))  # NaN: None
    return out


def _piece(gate: Gate, k: int) -> bytes:
    return bytes(gate.raw[gate.tok_start[k]:gate.s.token_end(k)])


def entries(gate: Gate, recorded: Sequence[Recorded | None]) -> list[dict]:
    """OpenAI `logprobs.content` for what the client was shown."""
    out: list[dict] = []
    tb = gate.token_bytes
    last_span = None
    for k, span in released_tokens(gate):
        if k >= len(recorded):
            break
        if span is not None:
            if span is not last_span:
                out.append({**_entry(span.placeholder.encode(), 0.0), "top_logprobs": []})
                last_span = span
            continue
        rec = recorded[k]
        if rec is None:
            continue
        chosen, alts = rec
        tok, text = gate.tokens[k], _piece(gate, k)
        shown = [_entry(a if isinstance(a, bytes) else tb[a], lp) for a, lp in alts
                 if a in (tok, text) or not gate.could_reveal(k, a)]
        out.append({**_entry(text, chosen), "top_logprobs": shown})
    return out
