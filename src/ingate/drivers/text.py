"""A TEXT gate over a stream of text deltas: what a remote, OpenAI-compatible upstream sends.

There are no logits to mask and no KV cache to roll back. Each delta is fed to the gate; what it
holds back is not released. When a prevented match or a rejected group is found, the gate drops
the held text from its start, and this driver cancels the upstream stream and asks the source to
continue from the text that stays (`attempt` counts the restarts, so a source can vary its seed
or add a logit bias). After `max_rollbacks` restarts the gate ends the stream before the match.
An upstream that fails mid-stream ends it closed: nothing held is released.

A stop (a stop rule, the client gone, `max_tokens` reached) closes the source's iterator at once:
a source that streams from an upstream closes its connection there, so the upstream stops too.

With a structure (response_format, a tool call), each delta is checked byte by byte before the
gate sees it: the part the structure allows is fed, and at the first byte it does not the
upstream is cancelled and asked to continue from there, up to `STRUCTURE_RETRIES` times; then the
stream ends `content_filter`. A stream that ends before the structure is complete is continued
the same way. Nothing that breaks the structure is ever released.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

from ingate import logprobs
from ingate.gate.decision import Action
from ingate.gate.gate import Gate, Mode, Verdict
from ingate.loop import DecisionSink, Emitter, Finish, GenerationFailed, Result, TextSink, end_stream, partial_result
from ingate.structure.matcher import TextMatcher

STRUCTURE_RETRIES = 2  # continuations after the upstream broke the structure, before the stream ends


class Delta(NamedTuple):
    """One piece of an upstream's stream: its text and, when the upstream sent logprobs for it
    (one token), the entropy estimated from them (NaN: unknown), its logprob and the alternatives
    (text bytes, logprob) the upstream listed."""

    text: str | bytes  # bytes: a valid prefix of a delta, cut where it broke the structure
    entropy: float = math.nan
    logprob: float = math.nan
    top: tuple[tuple[bytes, float], ...] = ()


# (text so far, attempt) -> an iterator of deltas that continue it; closing it cancels the stream
Source = Callable[[str, int], Iterator[str | Delta]]


def govern_text(gate: Gate, source: Source, on_text: TextSink | None = None,
                on_decisions: DecisionSink | None = None, request_id: str = "-",
                cancelled: Callable[[], bool] | None = None, max_tokens: int | None = None,
                top_logprobs: int | None = None, structure: TextMatcher | None = None) -> Result:
    """Drive `gate` over what `source` streams until it ends, a rule stops it, `cancelled()` turns
    true (checked between deltas) or `max_tokens` deltas are kept (finish `length`).
    `top_logprobs` (not None): the result carries OpenAI logprobs for the released tokens, with up
    to that many alternatives each, filtered as on the local engine (ingate.logprobs).
    `structure`: what the text must follow (checked before the gate sees it)."""
    if gate.mode is not Mode.TEXT:
        raise ValueError(f"govern_text drives a {Mode.TEXT} gate, not {gate.mode}")
    emit = Emitter(gate, on_text, on_decisions)
    gate_us: list[float] = []
    recorded: list[logprobs.Recorded | None] = []  # per stream token, when top_logprobs is set

    attempt, restart, broken = 0, False, 0
    matched = 0  # bytes of gate.raw the structure has consumed

    def rolled_back(_: int) -> None:
        nonlocal restart
        restart = True

    def broke(why: str) -> str | None:
        """The upstream broke the structure: continue from the last valid byte, or end the stream."""
        nonlocal broken
        broken += 1
        if broken > STRUCTURE_RETRIES:
            gate.halt("structure", Action.STOP, f"the upstream's output {why} after {STRUCTURE_RETRIES} "
                      "continuations; the stream ends")
            return Finish.CONTENT_FILTER
        gate.note("structure", Action.RESAMPLE, f"the upstream's output {why}; continued from the last valid byte")
        rolled_back(0)
        return None

    finish: str | None = None
    while finish is None:
        if structure is not None and matched > len(gate.raw):  # the gate withdrew text: so does the structure
            structure.rollback(matched - len(gate.raw))
            matched = len(gate.raw)
        stream, restart = source(gate.raw.decode("utf-8", errors="replace"), attempt), False
        try:
            for piece in stream:
                if cancelled is not None and cancelled():
                    gate.halt("client", Action.CANCEL, "client went away; upstream request cancelled")
                    finish = Finish.CANCELLED
                    break
                delta = piece if isinstance(piece, Delta) else Delta(piece)
                g, n = time.perf_counter(), gate.position
                data, cut = _bytes(delta.text), None
                if structure is not None:
                    ok = structure.feed(data)
                    matched += ok
                    if ok < len(data):  # the valid part goes on to the gate; the rest never does
                        data, cut = data[:ok], f"broke the {structure.structure.kind} structure at byte {matched}"
                finish = _delta(gate, delta._replace(text=data) if cut else delta, rolled_back) if data else None
                if finish is None and not restart and cut is not None:
                    assert structure is not None
                    # text after a complete structure is dropped (a trailing newline); else continue
                    finish = end_stream(gate, rolled_back, Finish.STOP, request_id) if structure.done else broke(cut)
                if finish is None and not restart and max_tokens is not None and gate.position >= max_tokens:
                    finish = end_stream(gate, rolled_back, Finish.LENGTH, request_id)
                gate_us.append((time.perf_counter() - g) * 1e6)
                if top_logprobs is not None:
                    _record(gate, recorded, n, delta, top_logprobs)
                if finish is not None or restart:
                    break
                emit(gate.release())
            else:
                if structure is not None and not structure.accepting:  # the upstream stopped short of it
                    finish = broke(f"ended before the {structure.structure.kind} structure was complete")
                if finish is None and not restart:
                    finish = end_stream(gate, rolled_back, Finish.STOP, request_id)
        except Exception as e:  # the upstream died mid-stream: nothing held is released
            gate.fail("upstream", e)
            emit("")
            raise GenerationFailed(partial_result(gate, 0, emit.elapsed, emit.ttft), e) from e
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # cancel: a generator source stops its upstream request here
        attempt += restart
    if finish in (Finish.STOP, Finish.LENGTH):
        emit(gate.release(final=True))
    elif finish == Finish.CONTENT_FILTER:
        emit(gate.release())  # up to the cap: what was judged admissible before the stop
    else:
        emit("")
    eb = gate.entropy
    measured = any(not math.isnan(e) for e in gate.entropies)
    if top_logprobs is not None:
        del recorded[gate.position:]
    return Result(logprobs=logprobs.entries(gate, recorded) if top_logprobs is not None else None,
                  text=gate.text, finish_reason=finish, decisions=gate.decisions, completion_tokens=gate.position,
                  elapsed_s=emit.elapsed, ttft_s=emit.ttft, gate_us=gate_us,
                  held_max_chars=gate.held_max_chars, rollbacks=gate.rollbacks, semantic=gate.semantic_stats,
                  entropy=list(gate.entropies) if measured else None,
                  entropy_summary=eb.summary(gate.entropies) if eb is not None else None)


def _record(gate: Gate, recorded: list[logprobs.Recorded | None], n: int, delta: Delta, top: int) -> None:
    """Keep `recorded` aligned with the stream's tokens: what a rollback took back goes, and the
    delta's logprobs are kept when it joined the stream whole as token n."""
    del recorded[gate.position:]
    recorded.extend([None] * (gate.position - len(recorded)))
    if gate.position > n and not math.isnan(delta.logprob) and \
            gate.raw[gate.tok_start[n]:gate.s.token_end(n)] == _bytes(delta.text):
        recorded[n] = (delta.logprob, list(delta.top[:top]))


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text


def _delta(gate: Gate, delta: Delta, rolled_back: Callable[[int], None]) -> str | None:
    """Feed one delta; the finish reason once the stream ends (None: go on, perhaps restarted)."""
    adm = gate.feed(delta.text, delta.entropy)
    if adm.verdict is Verdict.ROLLBACK:
        rolled_back(adm.rollback)
        return None
    if adm.verdict is Verdict.END:
        return end_stream(gate, rolled_back, Finish.STOP)
    if adm.verdict is Verdict.STOP:
        gate.settle(final=True, can_rollback=False)
        return Finish.CONTENT_FILTER
    sem = gate.settle()
    if sem.verdict is Verdict.ROLLBACK:
        rolled_back(sem.rollback)
        return None
    return Finish.CONTENT_FILTER if sem.verdict is Verdict.STOP else None
