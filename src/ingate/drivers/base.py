"""What every driver of a gate shares: how a stream ends, what it leaves, and the order of release.

  Finish            OpenAI's finish_reason, plus the two ends a client never asked for
  GenerationParams  what a request asks of a generation (tokens, sampling, logprobs)
  Result            what one generation left; `Result.of(gate, ...)` builds it from the gate's state
  Emitter           decisions to the audit, then text to the client, in that order (invariant 5)
  after_admission   one verdict -> what the driver does next: go on, roll back, or finish
  end_stream        the one end path: what waited for the end is decided, every group judged
  GenerationFailed  the engine or upstream failed: what was decided still counts
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from ingate.gate.decision import Decision
from ingate.gate.gate import Admission, Gate, Verdict
from ingate.sampling import SamplingParams

log = logging.getLogger("ingate.drivers")
TextSink = Callable[[str], None]
DecisionSink = Callable[[list[Decision]], None]


class Finish(StrEnum):
    """How a stream ends (OpenAI's finish_reason, plus the two ends a client never asked for)."""

    STOP = "stop"  # the model ended, or a stop sequence
    LENGTH = "length"  # max_tokens, or the context is full
    CONTENT_FILTER = "content_filter"  # governance ended it (a stop rule, a spent budget, a failed check)
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"  # the engine failed


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
    """What one generation left. Built by keyword, by `of` from a gate, or `refused`."""

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
    speculation: dict | None = None  # drafted and accepted tokens, when the engine speculated
    masked: dict[str, int] | None = None  # mask_upstream: values masked in the request, per type (counts only)
    vault: Any = None  # the session's vault after the request (kept by the worker; never reported)

    @classmethod
    def of(cls, gate: Gate, finish: str, elapsed_s: float, ttft_s: float | None = None, prompt_tokens: int = 0,
           **extra) -> Result:
        """The result a gate's stream left: its released text, decisions and accounts. `extra`
        holds what only the driver knows (per-step timings, logprobs)."""
        eb = gate.entropy
        return cls(text=gate.text, finish_reason=finish, decisions=list(gate.decisions),
                   completion_tokens=gate.position, elapsed_s=elapsed_s, ttft_s=ttft_s,
                   held_max_chars=gate.held_max_chars, rollbacks=gate.rollbacks, prompt_tokens=prompt_tokens,
                   semantic=gate.semantic_stats, entropy_summary=eb.summary(gate.entropies) if eb is not None else None,
                   **extra)

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
          | ({"entropy": self.entropy_summary} if self.entropy_summary is not None else {}) \
          | ({"speculation": self.speculation} if self.speculation is not None else {})


def partial_result(gate: Gate | None, n_prompt: int, elapsed: float, ttft: float | None = None,
                   text: str = "", tokens: int = 0) -> Result:
    """What a generation that the engine could not finish leaves: finish_reason `error`.
    Without a gate (ungoverned), `text` and `tokens` are what was released and generated."""
    if gate is None:
        return Result(text=text, finish_reason=Finish.ERROR, completion_tokens=tokens, elapsed_s=elapsed, ttft_s=ttft,
                      prompt_tokens=n_prompt)
    return Result.of(gate, Finish.ERROR, elapsed, ttft, n_prompt)


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

    def final(self, finish: str) -> None:
        """The last release: everything held when the stream ended normally; up to the cap when a
        rule stopped it (what was judged admissible before the stop); nothing more otherwise."""
        if finish in (Finish.STOP, Finish.LENGTH):
            self(self.gate.release(final=True))
        elif finish == Finish.CONTENT_FILTER:
            self(self.gate.release())
        else:
            self("")


RolledBack = Callable[[int], None]


def after_admission(gate: Gate, adm: Admission, rolled_back: RolledBack,
                    accept: Callable[[], None] | None = None) -> str | None:
    """The one verdict-to-finish step every driver takes after the gate judged a token or delta:
    roll back (None: go on from the cut), finish (the reason), or accept and apply the semantic
    verdicts that are due. `accept` puts the token into the engine's context (FULL), when the gate
    admitted it."""
    if adm.verdict is Verdict.ROLLBACK:
        rolled_back(adm.rollback)
        return None
    if adm.verdict is Verdict.END:  # a stop sequence: the model's text ends here
        if accept is not None:
            accept()
        return end_stream(gate, rolled_back, Finish.STOP)
    if adm.verdict is Verdict.STOP:
        gate.settle(final=True, can_rollback=False)  # the text before the stop is judged too
        return Finish.CONTENT_FILTER
    if accept is not None:
        accept()
    sem = gate.settle()  # semantic verdicts that are due
    if sem.verdict is Verdict.ROLLBACK:
        rolled_back(sem.rollback)
        return None
    return Finish.CONTENT_FILTER if sem.verdict is Verdict.STOP else None


def end_stream(gate: Gate, rolled_back: RolledBack, finish: str, request_id: str = "-") -> str | None:
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
