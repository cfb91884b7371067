"""An upstream model behind the same interface as the engine core: `run(request) -> Result`.

One compiled policy governs the upstream's text deltas through a TEXT gate (ingate.drivers.text):
exact hold-back, redaction in place, a stop that closes the upstream connection at once, and a
prevented match or a rejected group withdrawn and continued (ingate.upstream.body). Refusals
(session budget, input screening) and the audit work as on the local engine; escalation is the
server's, before the request is queued. Requests run concurrently, up to the model's
`max_concurrency` (the server's worker threads); each has its own gate and connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx

from ingate.audit import AuditLog
from ingate.core import DecisionSink, Request, TextSink
from ingate.drivers.text import Delta, govern_text
from ingate.gate.compile import compile_policy
from ingate.gate.decision import Action, Decision
from ingate.gate.gate import Gate, Mode
from ingate.loop import Finish, GenerationFailed, Result, partial_result
from ingate.refusal import refuse, screen_input, session_budget
from ingate.structure.matcher import TextMatcher
from ingate.structure.rules import inside_structure
from ingate.upstream.body import Bodies
from ingate.upstream.client import Client, UpstreamRejected
from ingate.upstream.config import LOGPROBS, ModelsError, UpstreamModel
from ingate.upstream.deltas import deltas
from ingate.upstream.vocab import load_vocab

WITHDRAWN = (Action.PREVENT, Action.RESAMPLE)


class UpstreamCore:
    """Governs one upstream model. Thread-safe: every request has its own gate and stream."""

    restarts = 0
    last_crash: str | None = None
    alive = True

    def __init__(self, spec: UpstreamModel, audit: AuditLog | None, transport: httpx.BaseTransport | None = None):
        self.spec, self.name, self.audit = spec, spec.name, audit
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
        rid, policy, t0 = req.request_id, req.policy, time.perf_counter()

        def on_decisions(ds: list[Decision]) -> None:
            if self.audit is not None:
                self.audit.record(rid, policy.name, ds, policy.store_text)
            if on_audited is not None:
                on_audited(ds)

        compiled = compile_policy(policy)
        refusal = session_budget(policy, req.session_entropy) or screen_input(compiled, req.messages)
        if req.structure is not None:  # redaction inside JSON would break it: prevented instead
            compiled = compile_policy(inside_structure(policy))
        if refusal is not None:  # refused before the upstream is asked: nothing spent there
            return refuse(refusal, policy, rid, self.audit, req.session, 0, time.perf_counter() - t0, on_text,
                          on_audited, req.key_id)
        gate = Gate(compiled, None, req.stop, session_entropy=req.session_entropy, mode=Mode.TEXT)
        top = req.params.logprobs
        if top is not None and not self.spec.can(LOGPROBS):
            raise GenerationFailed(partial_result(None, 0, 0.0), UpstreamRejected(
                f"the upstream model {self.name!r} does not declare the logprobs capability; ask without logprobs"))
        measure = self.spec.can(LOGPROBS) and (gate.entropy is not None or req.params.entropy or top is not None)
        call = _Call(self, req, gate, Bodies(self.spec, req, self.vocab, measure))
        try:
            res = govern_text(gate, call.source, on_text, on_decisions, rid, cancelled, req.params.max_tokens, top,
                              TextMatcher(req.structure) if req.structure is not None else None)
        except GenerationFailed as e:
            e.result.upstream = call.stats(e.result.finish_reason)
            self._record(req, e.result)
            raise
        except Exception as e:  # ingate's own fault outside the stream: fail closed, audited
            gate.fail("ingate", e)
            on_decisions(gate.take_decisions())
            res = partial_result(gate, 0, time.perf_counter() - t0)
            res.upstream = call.stats(res.finish_reason)
            self._record(req, res)
            raise GenerationFailed(res, e) from e
        res.upstream = call.stats(res.finish_reason)
        self._record(req, res)
        return res

    def _record(self, req: Request, res: Result) -> None:
        if self.audit is not None:
            self.audit.record_request(req.request_id, req.policy.name, res, req.session, req.key_id)


class _Call:
    """One client request's upstream requests: the first, then one per continuation."""

    def __init__(self, core: UpstreamCore, req: Request, gate: Gate, bodies: Bodies):
        self.core, self.req, self.gate, self.bodies = core, req, gate, bodies
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
