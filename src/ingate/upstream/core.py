"""An upstream model as a core: one compiled policy governs the upstream's text deltas through a
TEXT gate (ingate.drivers.text): exact hold-back, redaction in place, a stop that closes the
upstream connection at once, and a prevented match or a rejected group withdrawn and continued
(ingate.upstream.body). The pipeline around it (refusals, the audit) is `ingate.core.govern`;
escalation is the server's, before the request is queued. Requests run concurrently, up to the
model's `max_concurrency`; each has its own gate and connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

from ingate.core import LOGPROBS, Request, Sinks, govern
from ingate.drivers.base import DecisionSink, Finish, GenerationFailed, Result, TextSink
from ingate.drivers.text import Delta, govern_text
from ingate.gate.compile import CompiledPolicy, compile_policy
from ingate.gate.decision import Action
from ingate.gate.gate import Gate, Mode
from ingate.policy import Policy
from ingate.store.audit import AuditLog
from ingate.structure.matcher import TextMatcher
from ingate.upstream.body import Bodies
from ingate.upstream.client import Client, UpstreamRejected
from ingate.upstream.config import ModelsError, UpstreamModel
from ingate.upstream.deltas import deltas
from ingate.upstream.vocab import load_vocab

WITHDRAWN = (Action.PREVENT, Action.RESAMPLE)


class UpstreamCore:
    """Governs one upstream model. Thread-safe: every request has its own gate and stream."""

    def __init__(self, spec: UpstreamModel, audit: AuditLog | None, transport: httpx.BaseTransport | None = None):
        self.spec, self.name, self.audit = spec, spec.name, audit
        self.capabilities = frozenset({LOGPROBS}) if spec.can(LOGPROBS) else frozenset()
        self.max_concurrency = spec.max_concurrency
        try:
            self.vocab = load_vocab(spec.tokenizer) if spec.tokenizer else None
        except (ValueError, OSError, RuntimeError) as e:
            raise ModelsError(f"model {spec.name!r}: cannot load the tokenizer {spec.tokenizer!r} ({e}); give a GGUF "
                              "file of the upstream's model, or no tokenizer") from None
        self.client = Client(spec, transport)
        self.on_close: list[Callable[[], None]] = []  # what this core owns and stops with it (a vLLM it started)

    def info(self) -> dict:
        return {"upstream": self.spec.base_url, "upstream_model": self.spec.model, "kind": self.spec.kind,
                "capabilities": sorted(self.spec.capabilities), "tokenizer": self.spec.tokenizer, "process": None}

    def ensure_alive(self) -> bool:
        return False

    def close(self) -> None:
        self.client.close()
        for stop in self.on_close:
            stop()

    def run(self, req: Request, on_text: TextSink | None = None, cancelled: Callable[[], bool] | None = None,
            on_audited: DecisionSink | None = None) -> Result:
        return govern(req, self.audit, TextDrive(self), Sinks(on_text, on_audited, cancelled))


class TextDrive:
    """An upstream's stream of deltas under a TEXT gate."""

    def __init__(self, core: UpstreamCore):
        self.core = core

    def prepare(self, req: Request) -> int:
        if req.params.logprobs is not None and not self.core.spec.can(LOGPROBS):
            raise UpstreamRejected(f"the upstream model {self.core.name!r} does not declare the logprobs capability; "
                                   "ask without logprobs")
        return 0

    def compiled(self, policy: Policy) -> CompiledPolicy:
        return compile_policy(policy)

    def gate(self, compiled: CompiledPolicy, req: Request) -> Gate:
        return Gate(compiled, None, req.gate_options(), mode=Mode.TEXT)

    def drive(self, gate: Gate | None, req: Request, on_text: TextSink | None, on_decisions: DecisionSink,
              cancelled: Callable[[], bool] | None) -> Result:
        assert gate is not None
        spec = self.core.spec
        measure = spec.can(LOGPROBS) and (gate.entropy is not None or req.params.entropy
                                          or req.params.logprobs is not None)
        call = _Call(self.core, gate, Bodies(spec, req, self.core.vocab, measure))
        try:
            res = govern_text(gate, call.source, on_text, on_decisions, req.request_id, cancelled,
                              req.params.max_tokens, req.params.logprobs,
                              TextMatcher(req.structure) if req.structure is not None else None)
        except GenerationFailed as e:
            e.result.upstream = call.stats(e.result.finish_reason)
            raise
        res.upstream = call.stats(res.finish_reason)
        return res


class _Call:
    """One client request's upstream requests: the first, then one per continuation."""

    def __init__(self, core: UpstreamCore, gate: Gate, bodies: Bodies):
        self.core, self.gate, self.bodies = core, gate, bodies
        self.requests = 0
        self.seen_decisions = 0
        self.ended_upstream = False  # the last upstream stream ended by itself (not cancelled by ingate)

    def source(self, kept: str, attempt: int) -> Iterator[Delta]:
        if attempt:
            for d in self.gate.decisions[self.seen_decisions:]:
                if d.action in WITHDRAWN and d.matched:
                    self.bodies.withdrawn(d.matched)
            self.seen_decisions = len(self.gate.decisions)
        path, body = self.bodies.build(kept, attempt, self.gate.position)
        self.requests += 1
        self.ended_upstream = False
        chunks = self.core.client.stream(path, body, may_retry=lambda: self.gate.out.released == 0)
        return self._pieces(chunks)

    def _pieces(self, chunks: Iterator[dict]) -> Iterator[Delta]:
        try:
            yield from deltas(chunks, self.bodies.logprobs)
            self.ended_upstream = True
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def stats(self, finish: str) -> dict:
        """What this request cost upstream, for the metrics and the benchmark."""
        return {"model": self.core.name, "requests": self.requests, "continuations": max(0, self.requests - 1),
                "cancelled_early": not self.ended_upstream and finish in (Finish.CONTENT_FILTER, Finish.CANCELLED),
                "logit_bias_tokens": len(self.bodies.banned)}
