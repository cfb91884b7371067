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

The gate never lets an inadmissible token reach the engine or a byte of a possible match
reach the client. An error inside the gate ends the stream closed (invariant 3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ingate import logprobs
from ingate.engines.base import Engine
from ingate.gate.gate import Decision, Gate, Verdict
from ingate.sampling import Sampler, SamplingParams

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


@dataclass
class Result:
    text: str
    finish_reason: str  # stop | length | content_filter
    decisions: list[Decision]
    completion_tokens: int
    elapsed_s: float
    ttft_s: float | None
    gate_us: list[float]  # per step: time in the gate, sampling excluded
    held_max_chars: int
    rollbacks: int
    held_bytes: list[int] = field(default_factory=list)  # per step: bytes held back after release
    prompt_tokens: int = 0
    logprobs: list[dict] | None = None  # OpenAI logprobs.content, when asked for
    semantic: dict | None = None  # token-group scoring summary, when the policy has semantic rules
    entropy: list[float] | None = None  # per token of the response (nats), when measured
    entropy_summary: dict | None = None  # the entropy rule's account, when the policy has one
    entropy_released: list[tuple[str, float | None]] | None = None  # (text, entropy) per released token

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
             cancelled: Callable[[], bool] | None = None) -> Result:
    """Generate up to max_tokens after `prompt`. Without a gate the loop is ungoverned (baseline).

    `cancelled` is polled once per token: a client that went away stops generation within one
    token, releases nothing more, and the cancellation is audited.
    """
    if gate is None:
        return _ungoverned(engine, prompt, params, on_text, cancelled)
    eb = gate.entropy
    measure = params.entropy or eb is not None
    sampler = Sampler(params.sampling, measure=measure)
    bound = eb.spec.max_token_entropy if eb is not None and eb.spec.narrow else None
    gate_us: list[float] = []
    t0 = time.perf_counter()
    ttft: float | None = None
    finish = "length"

    def emit(text: str) -> None:
        nonlocal ttft
        new = gate.take_decisions()
        if new and on_decisions:
            on_decisions(new)  # durable before the text it concerns is seen (invariant 5)
        if text:
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            if on_text:
                on_text(text)

    eos = _eos_ban(engine, params)
    held: list[int] = []
    recorded: list[logprobs.Recorded] = []  # one per admitted token, when logprobs are asked for
    limit = min(params.max_tokens, engine.n_ctx - len(prompt))  # a full context ends with "length"

    def rolled_back(n: int) -> None:
        del recorded[len(gate.tokens):]
        engine.rollback(n)

    def failed(e: BaseException) -> GenerationFailed:  # the engine died: audited, nothing more released
        gate.fail("engine", e)
        emit("")
        return GenerationFailed(partial_result(gate, len(prompt), time.perf_counter() - t0, ttft), e)

    try:
        engine.start(prompt)
    except Exception as e:
        raise failed(e) from e
    while True:
        if gate.position >= limit:
            if (end := _end(gate, rolled_back, "length")) is None:  # the last group is judged first
                continue
            finish = end
            break
        if cancelled is not None and cancelled():
            gate.halt("client", "cancel", "client went away; generation cancelled")
            finish = "cancelled"
            break
        try:
            logits = engine.step()
        except Exception as e:
            raise failed(e) from e
        g = time.perf_counter()
        sampling = 0.0  # sampling is not gate work: the ungoverned loop samples too
        try:
            steered = gate.bias(logits)  # steering after a semantic rollback; otherwise the same array
            s = time.perf_counter()
            token = sampler.sample(steered, _join(gate.banned(), eos), bound)
            sampling += time.perf_counter() - s
            if token < 0:
                gate.fail("ingate", RuntimeError("every token is banned at this position"))
                finish = "content_filter"
                break
            if engine.is_eog(token):
                if (end := _end(gate, rolled_back, "stop")) is None:
                    continue
                finish = end
                break
            adm = gate.admit(token, sampler.entropy)
            if adm.verdict is Verdict.RESAMPLE:
                mask = gate.mask()
                if eos is not None:
                    mask[eos] = True
                for _ in range(MAX_RESAMPLES):
                    s = time.perf_counter()
                    token = sampler.sample(steered, mask, bound)
                    sampling += time.perf_counter() - s
                    if token < 0 or engine.is_eog(token):
                        break
                    adm = gate.admit(token, sampler.entropy)
                    if adm.verdict is not Verdict.RESAMPLE:
                        break
                    # The mask follows a character's first reading; admission follows both ('I' as
                    # 'l'), so it can refuse a token the mask let through: ban it and draw again.
                    mask[token] = True
                else:
                    raise RuntimeError(f"{MAX_RESAMPLES} masked resamples in a row were refused")
                if token < 0:
                    finish = "content_filter"
                    break
                if engine.is_eog(token):
                    if (end := _end(gate, rolled_back, "stop")) is None:
                        continue
                    finish = end
                    break
            if adm.verdict is Verdict.ROLLBACK:
                rolled_back(adm.rollback)
                gate_us.append((time.perf_counter() - g - sampling) * 1e6)
                continue
            if params.logprobs is not None:  # every admitted token (a stop may release it whole)
                recorded.append(logprobs.record(logits, token, params.logprobs))
            if adm.verdict is Verdict.END:
                engine.accept(token)
                if (end := _end(gate, rolled_back, "stop")) is None:
                    continue
                finish = end
                break
            if adm.verdict is Verdict.STOP:
                gate.settle(final=True, can_rollback=False)  # the text before the match is judged too
                gate_us.append((time.perf_counter() - g - sampling) * 1e6)
                emit(gate.release())
                finish = "content_filter"
                break
            engine.accept(token)
            sem = gate.settle()  # semantic verdicts that are due
            if sem.verdict is Verdict.ROLLBACK:
                rolled_back(sem.rollback)
                gate_us.append((time.perf_counter() - g - sampling) * 1e6)
                continue
            text = gate.release()
        except Exception as e:  # fail closed: nothing more is released
            gate.fail("ingate", e)
            finish = "content_filter"
            break
        gate_us.append((time.perf_counter() - g - sampling) * 1e6)
        held.append(len(gate.raw) - gate.hold.released)
        emit(text)
        if sem.verdict is Verdict.STOP:
            finish = "content_filter"
            break
    if finish in ("stop", "length"):
        emit(gate.release(final=True))
    elif finish == "content_filter":
        emit(gate.release())  # up to the cap: what was judged admissible before the stop
    else:
        emit("")
    elapsed = time.perf_counter() - t0
    return Result(gate.text, finish, gate.decisions, gate.position, elapsed, ttft, gate_us,
                  gate.held_max_chars, gate.rollbacks, held, len(prompt),
                  logprobs.entries(gate, recorded) if params.logprobs is not None else None,
                  gate.semantic_stats, list(gate.entropies) if measure else None,
                  eb.summary(gate.entropies) if eb is not None else None,
                  logprobs.released_entropies(gate) if measure and (params.logprobs is not None or params.entropy)
                  else None)


def partial_result(gate: Gate | None, n_prompt: int, elapsed: float, ttft: float | None = None,
                   text: str = "", tokens: int = 0) -> Result:
    """What a generation that the engine could not finish leaves: finish_reason `error`.
    Without a gate (ungoverned), `text` and `tokens` are what was released and generated."""
    if gate is None:
        return Result(text, "error", [], tokens, elapsed, ttft, [], 0, 0, prompt_tokens=n_prompt)
    return Result(gate.text, "error", list(gate.decisions), gate.position, elapsed, ttft, [], gate.held_max_chars,
                  gate.rollbacks, prompt_tokens=n_prompt)


def _end(gate: Gate, rolled_back: Callable[[int], None], finish: str) -> str | None:
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
            return "content_filter"
        adm = gate.settle(final=True)
        if adm.verdict is Verdict.ROLLBACK:
            rolled_back(adm.rollback)
            return None
    except Exception as e:
        gate.fail("ingate", e)
    return "content_filter" if gate.stopped or gate.halted else finish


def _eos_ban(engine: Engine, params: GenerationParams) -> np.ndarray | None:
    if not params.ignore_eos:
        return None
    return np.fromiter((t for t in range(engine.vocab_size) if engine.is_eog(t)), dtype=np.int64)


def _join(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None or b is None:
        return a if b is None else b
    return np.concatenate([a, b])


def _ungoverned(engine: Engine, prompt: list[int], params: GenerationParams,
                on_text: TextSink | None, cancelled: Callable[[], bool] | None = None) -> Result:
    import codecs

    sampler = Sampler(params.sampling)
    table = engine.token_bytes()
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parts: list[str] = []
    t0 = time.perf_counter()
    ttft: float | None = None
    finish, n = "length", 0
    eos = _eos_ban(engine, params)
    limit = min(params.max_tokens, engine.n_ctx - len(prompt))
    try:
        engine.start(prompt)
    except Exception as e:
        raise GenerationFailed(partial_result(None, len(prompt), time.perf_counter() - t0), e) from e
    while n < limit:
        if cancelled is not None and cancelled():
            finish = "cancelled"
            break
        try:
            logits = engine.step()
        except Exception as e:  # released so far: exactly what the client saw
            raise GenerationFailed(partial_result(None, len(prompt), time.perf_counter() - t0, ttft,
                                                  "".join(parts), n), e) from e
        token = sampler.sample(logits, eos)
        if engine.is_eog(token):
            finish = "stop"
            break
        engine.accept(token)
        n += 1
        text = dec.decode(table[token])
        if text:
            ttft = ttft if ttft is not None else time.perf_counter() - t0
            parts.append(text)
            if on_text:
                on_text(text)
    tail = dec.decode(b"", final=True)
    if tail:
        parts.append(tail)
        if on_text:
            on_text(tail)
    return Result("".join(parts), finish, [], n, time.perf_counter() - t0, ttft, [], 0, 0, [], len(prompt))
