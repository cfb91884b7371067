"""The governed generation loop, engine-agnostic.

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

`generate` drives `_Run.step` (one draw, one decision, one end path) until it returns a finish
reason, so a batch driver can call the same step for many sequences.

The gate never lets an inadmissible token reach the engine or a byte of a possible match
reach the client. An error inside the gate ends the stream closed (invariant 3).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ingate import logprobs
from ingate.engines.base import FULL_LOGITS, ROLLBACK, Engine, EngineError
from ingate.gate.decision import Action, Decision
from ingate.gate.gate import Admission, Gate, Mode, Verdict
from ingate.sampling import Sampler, SamplingParams
from ingate.structure.matcher import TokenMatcher

log = logging.getLogger("ingate.loop")


class Finish(StrEnum):
    """How a stream ends (OpenAI's finish_reason, plus the two ends a client never asked for)."""

    STOP = "stop"  # the model ended, or a stop sequence
    LENGTH = "length"  # max_tokens, or the context is full
    CONTENT_FILTER = "content_filter"  # governance ended it (a stop rule, a spent budget, a failed check)
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"  # the engine failed

TextSink = Callable[[str], None]
MAX_RESAMPLES = 16  # masked draws refused in a row at one position before the stream fails closed
DecisionSink = Callable[[list[Decision]], None]


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    logprobs: int | None = None  # None: off; k: each released token's logprob and up to k alternatives
    entropy: bool = False  # measure each step's entropy even when no entropy rule asks for it

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {self.max_tokens}")


class GenerationFailed(Exception):
    """The engine failed before the generation could finish (a crash, a full context). `result`
    (finish_reason `error`) is what was generated, audited and released until then; `cause` is
    the engine's error, which is also this exception's `__cause__`."""

    def __init__(self, result: Result, cause: BaseException):
        super().__init__(str(cause))
        self.result, self.cause = result, cause


@dataclass(kw_only=True)
class Result:
    """What one generation left. Built by keyword; `refused` is the one shape of a refusal."""

    text: str
    finish_reason: str  # a Finish
    decisions: list[Decision] = field(default_factory=list)
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    ttft_s: float | None = None
    gate_us: list[float] = field(default_factory=list)  # per step: time in the gate, sampling excluded
    held_max_chars: int = 0
    rollbacks: int = 0
    held_bytes: list[int] = field(default_factory=list)  # per step: bytes held back after release
    prompt_tokens: int = 0
    logprobs: list[dict] | None = None  # OpenAI logprobs.content, when asked for
    semantic: dict | None = None  # token-group scoring summary, when the policy has semantic rules
    entropy: list[float] | None = None  # per token of the response (nats), when measured
    entropy_summary: dict | None = None  # the entropy rule's account, when the policy has one
    entropy_released: list[tuple[str, float | None]] | None = None  # (text, entropy) per released token
    upstream: dict | None = None  # an upstream model's account: its requests, continuations, early cancel

    @classmethod
    def refused(cls, text: str, decision: Decision, prompt_tokens: int = 0, elapsed_s: float = 0.0,
                **extra) -> Result:
        """A request refused before its first token (escalation, input screening, a spent
        budget): the refusal text, finish_reason content_filter, the one decision."""
        return cls(text=text, finish_reason=Finish.CONTENT_FILTER, decisions=[decision], prompt_tokens=prompt_tokens,
                   elapsed_s=elapsed_s, ttft_s=0.0, **extra)

    def stats(self) -> dict:
        g = np.asarray(self.gate_us) if self.gate_us else np.zeros(1)
        return {
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.completion_tokens / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
            "gate_us_p50": round(float(np.percentile(g, 50)), 1),
            "gate_us_p99": round(float(np.percentile(g, 99)), 1),
            "held_max_chars": self.held_max_chars,
            "rollbacks": self.rollbacks,
            "ttft_ms": round(self.ttft_s * 1000, 1) if self.ttft_s is not None else None,
        } | ({"semantic": self.semantic} if self.semantic is not None else {}) \
          | ({"entropy": self.entropy_summary} if self.entropy_summary is not None else {})


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
    if gate is None:
        return _ungoverned(engine, prompt, params, on_text, cancelled, structure)
    if gate.mode is not Mode.FULL:
        raise ValueError(f"ingate's own loop drives a {Mode.FULL} gate; a {gate.mode} gate has its driver in "
                         "ingate.drivers")
    missing = {FULL_LOGITS, ROLLBACK} - engine.capabilities
    if missing:
        raise EngineError(f"engine {engine.name!r} lacks {', '.join(sorted(missing))}, which ingate's own loop "
                          "needs (masks before sampling, rollback of held text); drive it in a mode that does "
                          "without")
    run = _Run(engine, gate, params, len(prompt), on_text, on_decisions, request_id, structure)
    try:
        engine.start(prompt)
    except Exception as e:
        raise run.failed(e) from e
    finish: str | None = None
    while finish is None:
        finish = run.step(cancelled)
    if finish in (Finish.STOP, Finish.LENGTH):
        run.emit(gate.release(final=True))
    elif finish == Finish.CONTENT_FILTER:
        run.emit(gate.release())  # up to the cap: what was judged admissible before the stop
    else:
        run.emit("")
    return run.result(finish)


_EOG = -2  # what a draw returns when the model ends the text


class Emitter:
    """Hands a gate's decisions to the audit, then its newly released text to the client, in that
    order (invariant 5), and times the first text. Every driver of a gate emits through one."""

    def __init__(self, gate: Gate, on_text: TextSink | None, on_decisions: DecisionSink | None):
        self.gate, self.on_text, self.on_decisions = gate, on_text, on_decisions
        self.t0 = time.perf_counter()
        self.ttft: float | None = None

    def __call__(self, text: str) -> None:
        new = self.gate.take_decisions()
        if new and self.on_decisions:
            self.on_decisions(new)  # durable before the text it concerns is seen
        if text:
            self.ttft = self.ttft if self.ttft is not None else time.perf_counter() - self.t0
            if self.on_text:
                self.on_text(text)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


class _Run:
    """One governed generation as a step machine: `step` draws one token, has the gate decide, and
    returns the finish reason once the stream ends (None: go on). One draw, one end path."""

    def __init__(self, engine: Engine, gate: Gate, params: GenerationParams, n_prompt: int,
                 on_text: TextSink | None, on_decisions: DecisionSink | None, request_id: str = "-",
                 structure: TokenMatcher | None = None):
        self.engine, self.gate, self.params, self.n_prompt = engine, gate, params, n_prompt
        self.request_id, self.structure = request_id, structure
        eb = gate.entropy
        self.measure = params.entropy or eb is not None
        self.sampler = Sampler(params.sampling, measure=self.measure)
        self.bound = eb.spec.max_token_entropy if eb is not None and eb.spec.narrow else None
        self.eos = _eos_ban(engine, params)
        self.limit = min(params.max_tokens, engine.n_ctx - n_prompt)  # a full context ends with "length"
        self.gate_us: list[float] = []
        self.held: list[int] = []
        self.recorded: list[logprobs.Recorded] = []  # one per admitted token, when logprobs are asked for
        self.emit = Emitter(gate, on_text, on_decisions)
        self.sampling = 0.0  # sampling time inside the current step: not gate work
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
        del self.recorded[len(self.gate.tokens):]
        self.engine.rollback(n)
        if self.structure is not None:
            self.structure.rollback(n)

    def accept(self, token: int) -> None:
        self.engine.accept(token)
        if self.structure is not None:
            self.structure.consume(token)

    def step(self, cancelled: Callable[[], bool] | None) -> str | None:
        gate = self.gate
        if self.structure is not None and self.structure.done:  # nothing may follow a complete structure
            return self.end(Finish.STOP)
        if gate.position >= self.limit:
            return self.end(Finish.LENGTH)
        if cancelled is not None and cancelled():
            gate.halt("client", Action.CANCEL, "client went away; generation cancelled")
            return Finish.CANCELLED
        try:
            logits = self.engine.step()
            state = self.engine.hidden() if self.feature_id is not None else None  # type: ignore[attr-defined]
        except Exception as e:
            raise self.failed(e) from e
        g, self.sampling = time.perf_counter(), 0.0
        try:
            if self.feature_id is not None:
                gate.observe_hidden(self.feature_id, state)
            finish, text = self.decide(logits)
        except Exception as e:  # fail closed: nothing more is released
            log.error("request %s: the gate failed; the stream ends closed", self.request_id, exc_info=e)
            gate.fail("ingate", e)
            return Finish.CONTENT_FILTER
        self.gate_us.append((time.perf_counter() - g - self.sampling) * 1e6)  # per drawn token
        if text is not None:
            self.held.append(len(gate.raw) - gate.hold.released)
            self.emit(text)
        return finish

    def decide(self, logits: np.ndarray) -> tuple[str | None, str | None]:
        """(finish reason or None, newly releasable text or None) for one drawn token."""
        gate = self.gate
        token, adm = self.draw(gate.bias(logits))  # steering after a semantic rollback, else the logits
        if token == _EOG:
            return self.end(Finish.STOP), None
        if adm.verdict is Verdict.ROLLBACK:
            self.rolled_back(adm.rollback)
            return None, None
        if self.params.logprobs is not None:  # every admitted token (a stop may release it whole)
            self.recorded.append(logprobs.record(logits, token, self.params.logprobs))
        if adm.verdict is Verdict.END:
            self.accept(token)
            return self.end(Finish.STOP), None
        if adm.verdict is Verdict.STOP:
            gate.settle(final=True, can_rollback=False)  # the text before the match is judged too
            return Finish.CONTENT_FILTER, gate.release()
        self.accept(token)
        sem = gate.settle()  # semantic verdicts that are due
        if sem.verdict is Verdict.ROLLBACK:
            self.rolled_back(sem.rollback)
            return None, None
        return (Finish.CONTENT_FILTER if sem.verdict is Verdict.STOP else None), gate.release()

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

    def result(self, finish: str) -> Result:
        gate, eb = self.gate, self.gate.entropy
        asked = self.params.logprobs is not None
        return Result(text=gate.text, finish_reason=finish, decisions=gate.decisions, completion_tokens=gate.position,
                      elapsed_s=self.emit.elapsed, ttft_s=self.emit.ttft, gate_us=self.gate_us,
                      held_max_chars=gate.held_max_chars, rollbacks=gate.rollbacks, held_bytes=self.held,
                      prompt_tokens=self.n_prompt, logprobs=logprobs.entries(gate, self.recorded) if asked else None,
                      semantic=gate.semantic_stats, entropy=list(gate.entropies) if self.measure else None,
                      entropy_summary=eb.summary(gate.entropies) if eb is not None else None,
                      entropy_released=logprobs.released_entropies(gate)
                      if self.measure and (asked or self.params.entropy) else None)


def partial_result(gate: Gate | None, n_prompt: int, elapsed: float, ttft: float | None = None,
                   text: str = "", tokens: int = 0) -> Result:
    """What a generation that the engine could not finish leaves: finish_reason `error`.
    Without a gate (ungoverned), `text` and `tokens` are what was released and generated."""
    if gate is None:
        return Result(text=text, finish_reason=Finish.ERROR, completion_tokens=tokens, elapsed_s=elapsed, ttft_s=ttft,
                      prompt_tokens=n_prompt)
    return Result(text=gate.text, finish_reason=Finish.ERROR, decisions=list(gate.decisions),
                  completion_tokens=gate.position, elapsed_s=elapsed, ttft_s=ttft,
                  held_max_chars=gate.held_max_chars, rollbacks=gate.rollbacks, prompt_tokens=n_prompt)


def end_stream(gate: Gate, rolled_back: Callable[[int], None], finish: str, request_id: str = "-") -> str | None:
    """End of stream: decide what waited for the end (a whole word's edge), judge every remaining
    group. None when something was rolled back (generate on); otherwise the finish reason,
    content_filter when a rule stopped the stream.

    A failure here (the encoder, the engine's rollback) fails closed like any other in the gate.
    """
    try:
        edge = gate.end_of_text()  # a whole word that ends the text is decided now
        if edge.verdict is Verdict.ROLLBACK:
            rolled_back(edge.rollback)
            return None
        if edge.verdict is Verdict.STOP:
            gate.settle(final=True, can_rollback=False)
            return Finish.CONTENT_FILTER
        adm = gate.settle(final=True)
        if adm.verdict is Verdict.ROLLBACK:
            rolled_back(adm.rollback)
            return None
    except Exception as e:
        log.error("request %s: the gate failed at the end of the stream; it ends closed", request_id, exc_info=e)
        gate.fail("ingate", e)
    return Finish.CONTENT_FILTER if gate.stopped or gate.halted else finish


def _eos_ban(engine: Engine, params: GenerationParams) -> np.ndarray | None:
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


def _ungoverned(engine: Engine, prompt: list[int], params: GenerationParams, on_text: TextSink | None,
                cancelled: Callable[[], bool] | None = None, structure: TokenMatcher | None = None) -> Result:
    import codecs

    sampler = Sampler(params.sampling)
    table = engine.token_bytes()
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    t0 = time.perf_counter()
    ttft: float | None = None
    finish, n = Finish.LENGTH, 0
    eos = _eos_ban(engine, params)
    limit = min(params.max_tokens, engine.n_ctx - len(prompt))
    try:
        engine.start(prompt)
    except Exception as e:
        raise GenerationFailed(partial_result(None, len(prompt), time.perf_counter() - t0), e) from e
    while n < limit:
        if cancelled is not None and cancelled():
            finish = Finish.CANCELLED
            break
        if structure is not None and structure.done:
            finish = Finish.STOP
            break
        try:
            logits = engine.step()
        except Exception as e:  # released so far: exactly what the client saw
            raise GenerationFailed(partial_result(None, len(prompt), time.perf_counter() - t0, ttft,
                                                  "".join(parts), n), e) from e
        token = sampler.sample(logits, eos if structure is None else _with(structure.forbidden(), eos))
        if token < 0:  # only a structure can forbid every token (never, unless its grammar is wrong)
            raise GenerationFailed(partial_result(None, len(prompt), time.perf_counter() - t0, ttft, "".join(parts),
                                                  n), RuntimeError("the structure allows no token here"))
        if engine.is_eog(token):
            finish = Finish.STOP
            break
        engine.accept(token)
        if structure is not None:
            structure.consume(token)
        n += 1
        text = dec.decode(table[token])
        if text:
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            parts.append(text)
            if on_text:
                on_text(text)
    if structure is not None and structure.done:  # complete at the last token max_tokens allowed
        finish = Finish.STOP
    tail = dec.decode(b"", final=True)
    if tail:
        parts.append(tail)
        if on_text:
            on_text(tail)
    return Result(text="".join(parts), finish_reason=finish, completion_tokens=n, elapsed_s=time.perf_counter() - t0,
                  ttft_s=ttft, prompt_tokens=len(prompt))
