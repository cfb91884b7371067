"""The TEXT driver: a gate over a stream of text deltas, what a remote, OpenAI-compatible upstream sends.

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
from ingate.drivers.base import (
    DecisionSink,
    Emitter,
    Finish,
    GenerationFailed,
    Result,
    TextSink,
    after_admission,
    end_stream,
    partial_result,
)
from ingate.gate.decision import Action
from ingate.gate.gate import Gate, Mode
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
    return TextRun(gate, on_text, on_decisions, request_id, cancelled, max_tokens, top_logprobs, structure).run(source)


class TextRun:
    """One governed stream of deltas: attempts (the first request, then one per continuation)
    until a finish reason."""

    def __init__(self, gate: Gate, on_text: TextSink | None, on_decisions: DecisionSink | None, request_id: str,
                 cancelled: Callable[[], bool] | None, max_tokens: int | None, top_logprobs: int | None,
                 structure: TextMatcher | None):
        self.gate, self.request_id, self.cancelled, self.max_tokens = gate, request_id, cancelled, max_tokens
        self.top, self.structure = top_logprobs, structure
        self.emit = Emitter(gate, on_text, on_decisions)
        self.gate_us: list[float] = []
        self.recorded: list[logprobs.Recorded | None] = []  # per stream token, when top_logprobs is set
        self.restart = False  # the current attempt is over: continue from the gate's text
        self.broken = 0  # continuations after a broken structure
        self.matched = 0  # bytes of gate.raw the structure has consumed

    def rolled_back(self, _: int) -> None:
        self.restart = True

    def run(self, source: Source) -> Result:
        attempt, finish = 0, None
        while finish is None:
            self._sync_structure()
            self.restart = False
            stream = source(self.gate.raw.decode("utf-8", errors="replace"), attempt)
            try:
                finish = self._attempt(stream)
            except Exception as e:  # the upstream died mid-stream: nothing held is released
                self.gate.fail("upstream", e)
                self.emit("")
                raise GenerationFailed(partial_result(self.gate, 0, self.emit.elapsed, self.emit.ttft), e) from e
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # cancel: a generator source stops its upstream request here
            attempt += self.restart
        return self._result(finish)

    def _sync_structure(self) -> None:
        """The gate withdrew text: so does the structure."""
        if self.structure is not None and self.matched > len(self.gate.raw):
            self.structure.rollback(self.matched - len(self.gate.raw))
            self.matched = len(self.gate.raw)

    def _attempt(self, stream: Iterator[str | Delta]) -> str | None:
        """Feed one upstream stream: a finish reason, or None when it is to be continued."""
        gate = self.gate
        for piece in stream:
            if self.cancelled is not None and self.cancelled():
                gate.halt("client", Action.CANCEL, "client went away; upstream request cancelled")
                return Finish.CANCELLED
            delta = piece if isinstance(piece, Delta) else Delta(piece)
            g, n = time.perf_counter(), gate.position
            finish = self._delta(delta)
            self.gate_us.append((time.perf_counter() - g) * 1e6)
            if self.top is not None:
                _record(gate, self.recorded, n, delta, self.top)
            if finish is not None or self.restart:
                return finish
            self.emit(gate.release())
        if self.structure is not None and not self.structure.accepting:  # the upstream stopped short of it
            finish = self._broke(f"ended before the {self.structure.structure.kind} structure was complete")
            if finish is not None or self.restart:
                return finish
        return end_stream(gate, self.rolled_back, Finish.STOP, self.request_id)

    def _delta(self, delta: Delta) -> str | None:
        """One delta through the structure, then the gate."""
        gate, data, cut = self.gate, _bytes(delta.text), None
        if self.structure is not None:
            ok = self.structure.feed(data)
            self.matched += ok
            if ok < len(data):  # the valid part goes on to the gate; the rest never does
                data, cut = data[:ok], f"broke the {self.structure.structure.kind} structure at byte {self.matched}"
        finish = after_admission(gate, gate.feed(data, delta.entropy), self.rolled_back) if data else None
        if finish is None and not self.restart and cut is not None:
            assert self.structure is not None
            # text after a complete structure is dropped (a trailing newline); else continue
            finish = end_stream(gate, self.rolled_back, Finish.STOP, self.request_id) if self.structure.done \
                else self._broke(cut)
        if finish is None and not self.restart and self.max_tokens is not None and gate.position >= self.max_tokens:
            finish = end_stream(gate, self.rolled_back, Finish.LENGTH, self.request_id)
        return finish

    def _broke(self, why: str) -> str | None:
        """The upstream broke the structure: continue from the last valid byte, or end the stream."""
        self.broken += 1
        if self.broken > STRUCTURE_RETRIES:
            self.gate.halt("structure", Action.STOP, f"the upstream's output {why} after {STRUCTURE_RETRIES} "
                           "continuations; the stream ends")
            return Finish.CONTENT_FILTER
        self.gate.note("structure", Action.RESAMPLE, f"the upstream's output {why}; continued from the last valid "
                       "byte")
        self.rolled_back(0)
        return None

    def _result(self, finish: str) -> Result:
        gate = self.gate
        self.emit.final(finish)
        measured = any(not math.isnan(e) for e in gate.entropies)
        if self.top is not None:
            del self.recorded[gate.position:]
        return Result.of(gate, finish, self.emit.elapsed, self.emit.ttft, gate_us=self.gate_us,
                         logprobs=logprobs.entries(gate, self.recorded) if self.top is not None else None,
                         entropy=list(gate.entropies) if measured else None)


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
