"""The FULL driver: ingate's own loop over a local engine, one step machine per sequence.

    logits = engine.step()
    token  = sample(logits minus bans)           # unmasked draw: transparent when no rule bites
    verdict = gate.admit(token)                  # bytes through every detector
      RESAMPLE -> token = sample(logits minus gate.mask())    # prevented before it is accepted
                  (admitted again; a refused draw is banned too and drawn again)
      ROLLBACK -> engine.rollback(n); continue                # held partial match taken back
      STOP     -> release the admissible prefix; finish content_filter
    engine.accept(token)
    audit(decisions) ; client <- gate.release()  # decisions are durable before their text is seen
    at the end: gate.end_of_text()               # a whole word that ends the text is decided

`FullRun.step` is one draw, one decision, one end path, and returns the finish reason once the
stream ends. `generate` drives one run to its end; the batched engine (`ingate.engines.batch`)
drives many, one step each per decode of the batch, with the same `FullRun`.

The gate never lets an inadmissible token reach the engine or a byte of a possible match
reach the client. An error inside the gate ends the stream closed (invariant 3).
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Callable

import numpy as np

from ingate import logprobs
from ingate.drivers.base import (
    DecisionSink,
    Emitter,
    Finish,
    GenerationFailed,
    GenerationParams,
    Result,
    TextSink,
    after_admission,
    end_stream,
    partial_result,
)
from ingate.engines.base import FULL_LOGITS, ROLLBACK, Engine, EngineError
from ingate.gate.decision import Action
from ingate.gate.gate import Admission, Gate, Mode, Verdict
from ingate.sampling import Sampler
from ingate.structure.matcher import TokenMatcher

log = logging.getLogger("ingate.drivers.full")
MAX_RESAMPLES = 16  # masked draws refused in a row at one position before the stream fails closed
_EOG = -2  # what a draw returns when the model ends the text


def generate(engine: Engine, prompt: list[int], params: GenerationParams, gate: Gate | None = None,
             on_text: TextSink | None = None, on_decisions: DecisionSink | None = None,
             cancelled: Callable[[], bool] | None = None, request_id: str = "-",
             structure: TokenMatcher | None = None) -> Result:
    """Generate up to max_tokens after `prompt`. Without a gate the loop is ungoverned (baseline).

    `cancelled` is polled once per token: a client that went away stops generation within one
    token, releases nothing more, and the cancellation is audited. `request_id` names the request
    in the log lines of every path that fails closed. `structure`: a response format or tool
    call's matcher, whose mask is ANDed with the gate's at every draw and which rolls back with
    the engine; the stream ends (stop) once the structure is complete.
    """
    run = start_run(engine, prompt, params, gate, on_text, on_decisions, cancelled, request_id, structure)
    finish: str | None = None
    while finish is None:
        finish = run.step()
    return run.finish(finish)


def start_run(engine: Engine, prompt: list[int], params: GenerationParams, gate: Gate | None = None,
              on_text: TextSink | None = None, on_decisions: DecisionSink | None = None,
              cancelled: Callable[[], bool] | None = None, request_id: str = "-",
              structure: TokenMatcher | None = None) -> FullRun | Ungoverned:
    """A run started on `engine` (its prompt queued for the next decode), ready to `step`."""
    run: FullRun | Ungoverned
    if gate is None:
        run = Ungoverned(engine, params, len(prompt), on_text, cancelled, structure)
    else:
        check_engine(engine, gate)
        run = FullRun(engine, gate, params, len(prompt), on_text, on_decisions, cancelled, request_id, structure)
    try:
        engine.start(prompt)
    except Exception as e:
        raise run.failed(e) from e
    return run


def check_engine(engine: Engine, gate: Gate) -> None:
    if gate.mode is not Mode.FULL:
        raise ValueError(f"ingate's own loop drives a {Mode.FULL} gate; a {gate.mode} gate has its driver in "
                         "ingate.drivers")
    missing = {FULL_LOGITS, ROLLBACK} - engine.capabilities
    if missing:
        raise EngineError(f"engine {engine.name!r} lacks {', '.join(sorted(missing))}, which ingate's own loop "
                          "needs (masks before sampling, rollback of held text); drive it in a mode that does "
                          "without")


class FullRun:
    """One governed generation as a step machine: `step` draws one token, has the gate decide, and
    returns the finish reason once the stream ends (None: go on). One draw, one end path."""

    def __init__(self, engine: Engine, gate: Gate, params: GenerationParams, n_prompt: int,
                 on_text: TextSink | None, on_decisions: DecisionSink | None,
                 cancelled: Callable[[], bool] | None = None, request_id: str = "-",
                 structure: TokenMatcher | None = None):
        self.engine, self.gate, self.params, self.n_prompt = engine, gate, params, n_prompt
        self.cancelled, self.request_id, self.structure = cancelled, request_id, structure
        eb = gate.entropy
        self.measure = params.entropy or eb is not None
        self.sampler = Sampler(params.sampling, measure=self.measure)
        self.bound = eb.spec.max_token_entropy if eb is not None and eb.spec.narrow else None
        self.eos = eos_ban(engine, params)
        self.limit = min(params.max_tokens, engine.n_ctx - n_prompt)  # a full context ends with "length"
        self.gate_us: list[float] = []
        self.held: list[int] = []
        self.recorded: list[logprobs.Recorded] = []  # one per admitted token, when logprobs are asked for
        self.emit = Emitter(gate, on_text, on_decisions)
        self.sampling = 0.0  # sampling time inside the current step: not gate work
        self.cut = False  # the current step rolled back: nothing new to release
        # a head on the model's own hidden states: the engine keeps them (logits unchanged)
        enable = getattr(engine, "enable_hidden", None) if gate.wants_hidden else None
        self.feature_id: str | None = enable() if enable is not None else None

    def failed(self, e: BaseException) -> GenerationFailed:
        """The engine died: audited, logged, nothing more released."""
        log.error("request %s: the engine failed; the stream ends closed: %s: %s", self.request_id,
                  type(e).__name__, e)
        self.gate.fail("engine", e)
        self.emit("")
        return GenerationFailed(partial_result(self.gate, self.n_prompt, self.emit.elapsed, self.emit.ttft), e)

    def rolled_back(self, n: int) -> None:
        self.cut = True
        del self.recorded[len(self.gate.tokens):]
        self.engine.rollback(n)
        if self.structure is not None:
            self.structure.rollback(n)

    def accept(self, token: int) -> None:
        self.engine.accept(token)
        if self.structure is not None:
            self.structure.consume(token)

    def step(self) -> str | None:
        gate = self.gate
        if self.structure is not None and self.structure.done:  # nothing may follow a complete structure
            return self.end(Finish.STOP)
        if gate.position >= self.limit:
            return self.end(Finish.LENGTH)
        if self.cancelled is not None and self.cancelled():
            gate.halt("client", Action.CANCEL, "client went away; generation cancelled")
            return Finish.CANCELLED
        try:
            logits = self.engine.step()
            state = self.engine.hidden() if self.feature_id is not None else None  # type: ignore[attr-defined]
        except Exception as e:
            raise self.failed(e) from e
        g, self.sampling, self.cut = time.perf_counter(), 0.0, False
        try:
            if self.feature_id is not None:
                gate.observe_hidden(self.feature_id, state)
            finish = self.decide(logits)
        except Exception as e:  # fail closed: nothing more is released
            log.error("request %s: the gate failed; the stream ends closed", self.request_id, exc_info=e)
            gate.fail("ingate", e)
            return Finish.CONTENT_FILTER
        self.gate_us.append((time.perf_counter() - g - self.sampling) * 1e6)  # per drawn token
        if not self.cut and finish in (None, Finish.CONTENT_FILTER):
            self.held.append(len(gate.raw) - gate.hold.released)
            self.emit(gate.release())
        return finish

    def decide(self, logits: np.ndarray) -> str | None:
        """The finish reason, or None to go on, for one drawn token."""
        gate = self.gate
        token, adm = self.draw(gate.bias(logits))  # steering after a semantic rollback, else the logits
        if token == _EOG:
            return self.end(Finish.STOP)
        if self.params.logprobs is not None and adm.verdict is not Verdict.ROLLBACK:
            self.recorded.append(logprobs.record(logits, token, self.params.logprobs))  # a stop may release it
        return after_admission(gate, adm, self.rolled_back, lambda: self.accept(token))

    def draw(self, logits: np.ndarray) -> tuple[int, Admission]:
        """The one draw: sample, and while the gate asks, sample again under its mask. A masked
        draw admission still refuses (the mask is a superset only where it cannot be exact) is
        banned too. Every token banned: the stream fails closed, audited. A structure's mask
        applies to every draw: it is the output's shape, not a rule that may or may not bite."""
        gate, mask = self.gate, None
        first = _join(gate.banned(), self.eos)
        if self.structure is not None:
            first = _with(self.structure.forbidden(), first)
        for _ in range(MAX_RESAMPLES + 1):
            s = time.perf_counter()
            token = self.sampler.sample(logits, first if mask is None else mask, self.bound)
            self.sampling += time.perf_counter() - s
            if token < 0:
                raise RuntimeError("every token is banned at this position")
            if self.engine.is_eog(token):
                return _EOG, Admission(Verdict.END)
            adm = gate.admit(token, self.sampler.entropy)
            if adm.verdict is not Verdict.RESAMPLE:
                return token, adm
            if mask is None:
                mask = gate.mask()
                if self.eos is not None:
                    mask[self.eos] = True
                if self.structure is not None:
                    mask |= self.structure.forbidden()
            else:
                mask[token] = True
        raise RuntimeError(f"{MAX_RESAMPLES} masked draws in a row were refused")

    def end(self, finish: str) -> str | None:
        """The single end path: what waited for the end is decided, every remaining group judged.
        None when something was rolled back (generate on); else the finish reason."""
        return end_stream(self.gate, self.rolled_back, finish, self.request_id)

    def finish(self, finish: str) -> Result:
        """The last release, then what the generation left."""
        self.emit.final(finish)
        gate = self.gate
        asked = self.params.logprobs is not None
        return Result.of(gate, finish, self.emit.elapsed, self.emit.ttft, self.n_prompt, gate_us=self.gate_us,
                         held_bytes=self.held, logprobs=logprobs.entries(gate, self.recorded) if asked else None,
                         entropy=list(gate.entropies) if self.measure else None,
                         entropy_released=logprobs.released_entropies(gate)
                         if self.measure and (asked or self.params.entropy) else None)


class Ungoverned:
    """The same step machine with no gate: the baseline every governed run is measured against."""

    def __init__(self, engine: Engine, params: GenerationParams, n_prompt: int, on_text: TextSink | None,
                 cancelled: Callable[[], bool] | None = None, structure: TokenMatcher | None = None):
        self.engine, self.n_prompt, self.on_text = engine, n_prompt, on_text
        self.cancelled, self.structure = cancelled, structure
        self.sampler = Sampler(params.sampling)
        self.table = engine.token_bytes()
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.parts: list[str] = []
        self.t0, self.n = time.perf_counter(), 0
        self.ttft: float | None = None
        self.eos = eos_ban(engine, params)
        self.limit = min(params.max_tokens, engine.n_ctx - n_prompt)

    def failed(self, e: BaseException) -> GenerationFailed:
        """Released so far: exactly what the client saw."""
        return GenerationFailed(partial_result(None, self.n_prompt, time.perf_counter() - self.t0, self.ttft,
                                               "".join(self.parts), self.n), e)

    def step(self) -> str | None:
        if self.n >= self.limit:
            return Finish.LENGTH
        if self.cancelled is not None and self.cancelled():
            return Finish.CANCELLED
        if self.structure is not None and self.structure.done:
            return Finish.STOP
        try:
            logits = self.engine.step()
        except Exception as e:
            raise self.failed(e) from e
        eos = self.eos if self.structure is None else _with(self.structure.forbidden(), self.eos)
        token = self.sampler.sample(logits, eos)
        if token < 0:  # only a structure can forbid every token (never, unless its grammar is wrong)
            raise self.failed(RuntimeError("the structure allows no token here"))
        if self.engine.is_eog(token):
            return Finish.STOP
        self.engine.accept(token)
        if self.structure is not None:
            self.structure.consume(token)
        self.n += 1
        self._out(self.dec.decode(self.table[token]))
        return None

    def _out(self, text: str) -> None:
        if text:
            self.ttft = self.ttft if self.ttft is not None else time.perf_counter() - self.t0
            self.parts.append(text)
            if self.on_text:
                self.on_text(text)

    def finish(self, finish: str) -> Result:
        if self.structure is not None and self.structure.done:  # complete at the last token max_tokens allowed
            finish = Finish.STOP
        self._out(self.dec.decode(b"", final=True))
        return Result(text="".join(self.parts), finish_reason=finish, completion_tokens=self.n,
                      elapsed_s=time.perf_counter() - self.t0, ttft_s=self.ttft, prompt_tokens=self.n_prompt)


def eos_ban(engine: Engine, params: GenerationParams) -> np.ndarray | None:
    if not params.ignore_eos:
        return None
    return np.fromiter((t for t in range(engine.vocab_size) if engine.is_eog(t)), dtype=np.int64)


def _with(forbidden: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    """A copy of the bool mask `forbidden` with the token ids `ids` forbidden too."""
    out = forbidden.copy()
    if ids is not None:
        out[ids] = True
    return out


def _join(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return np.concatenate([a, b])
