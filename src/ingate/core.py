"""The one request pipeline, and the contract every backend (a "core") keeps.

A core serves one model: ingate's own llama.cpp engine (`ingate.runtime.LocalCore`, or
`ingate.engine_core.EngineCore` in a process of its own), an OpenAI-compatible upstream
(`ingate.upstream.core.UpstreamCore`), or vLLM with ingate's plugin (an upstream that masks).
They differ only in how a gate is driven (`Drive`); everything else a request goes through is
`govern`, written once:

    session budget and input screening    refused before the first token, audited (ingate.refusal)
    the structure                         under response_format or tools, redaction prevents instead
    the gate                              a fresh one per stream, from the policy compiled once
    drive                                 FULL (own loop), TEXT (an upstream's deltas)
    audit before release                  every decision durable before the text it concerns
    failure                               audited (the request row, an error decision), re-raised

The server and the CLI hold cores only through `Core`: no isinstance.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ingate.drivers.base import DecisionSink, GenerationFailed, GenerationParams, Result, TextSink, partial_result
from ingate.engines.base import EngineError
from ingate.gate.compile import CompiledPolicy
from ingate.gate.decision import Action, Decision
from ingate.gate.gate import Gate, GateOptions
from ingate.masking import Masking, Restorer, Vault
from ingate.policy import Policy
from ingate.refusal import refuse, screen_input, session_budget
from ingate.store.audit import AuditLog
from ingate.structure.rules import inside_structure
from ingate.structure.spec import TOOL_MARKER, Structure

# what a core can do besides generating (the server checks a request against these)
LOGPROBS = "logprobs"  # per-token log-probabilities (and entropy measured from them)
HIDDEN_STATES = "hidden_states"  # the generating model's hidden states (engine-feature heads)


@dataclass
class Request:
    """One generation, as the server or the CLI hands it to a core."""

    messages: list[dict[str, str]] | str  # a chat, or a raw prompt (completions)
    policy: Policy
    params: GenerationParams
    stop: Sequence[str] = ()
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    session: str | None = None  # the client's session id (for the audit row)
    session_entropy: float = 0.0  # what the session had spent before this request
    structure: Structure | None = None  # response_format or a tool call (ingate.structure)
    key_id: str | None = None  # the caller's API key id (ingate.keys), for the audit's request row
    vault: Vault | None = None  # a session's vault (mask_upstream with vault: session), else one per request
    masking: Masking | None = None  # set by `govern` on the masked request the drive sees

    def texts(self) -> tuple[str, ...]:
        """Every text the model is given: what pattern rules look for values in (ingate.gate.scatter)."""
        if isinstance(self.messages, str):
            return (self.messages,)
        return tuple(str(m.get("content") or "") for m in self.messages if m.get("content"))

    def gate_options(self) -> GateOptions:
        """What this request asks of its gate beside the policy."""
        return GateOptions(stop=tuple(self.stop), session_entropy=self.session_entropy, context=self.texts())


@dataclass
class Sinks:
    """Where a generation's output goes: released text, decisions once durable, and the poll that
    says the client went away."""

    on_text: TextSink | None = None
    on_audited: DecisionSink | None = None
    cancelled: Callable[[], bool] | None = None


class Core(Protocol):
    """A served model. `run` is called from up to `max_concurrency` threads at once."""

    name: str
    audit: AuditLog | None
    capabilities: frozenset[str]  # of LOGPROBS, HIDDEN_STATES
    max_concurrency: int  # generations it runs at once; the server's worker gives it that many threads

    def run(self, req: Request, on_text: TextSink | None = None, cancelled: Callable[[], bool] | None = None,
            on_audited: DecisionSink | None = None) -> Result:
        """One governed generation; released text goes to `on_text` as it comes. Raises
        GenerationFailed (its result audited) when the engine or upstream fails."""
        ...

    def info(self) -> dict:
        """What /healthz and `ingate doctor` show (layout, threads, process, upstream...)."""
        ...

    def ensure_alive(self) -> bool:
        """Start a new engine process if it died; True when it did (False: nothing to restart)."""
        ...

    def close(self) -> None: ...


class Drive(Protocol):
    """How one kind of core turns a request into a governed stream."""

    def prepare(self, req: Request) -> int:
        """Get the request ready (a local engine tokenizes it); its prompt tokens (0: unknown).
        May raise EngineError (a prompt over the context, a template that cannot render)."""
        ...

    def compiled(self, policy: Policy) -> CompiledPolicy:
        """The policy compiled (and warm) for this core."""
        ...

    def gate(self, compiled: CompiledPolicy, req: Request) -> Gate | None:
        """A fresh gate for the request's stream (None: ungoverned)."""
        ...

    def drive(self, gate: Gate | None, req: Request, on_text: TextSink | None, on_decisions: DecisionSink,
              cancelled: Callable[[], bool] | None) -> Result:
        """Run the stream to its end. Raises GenerationFailed with what was decided."""
        ...


def govern(req: Request, audit: AuditLog | None, drive: Drive, sinks: Sinks | None = None) -> Result:
    """The one request pipeline (see the module docstring)."""
    sinks = sinks or Sinks()
    policy, rid, t0 = req.policy, req.request_id, time.perf_counter()

    def on_decisions(ds: list[Decision]) -> None:
        if audit is not None:
            audit.record(rid, policy.name, ds, policy.store_text)
        if sinks.on_audited is not None:
            sinks.on_audited(ds)

    n_prompt, gate, given, restorer = 0, None, req.messages, None
    try:
        req, restorer = _masked(req, audit)
        n_prompt = drive.prepare(req)
        t_check = time.perf_counter()
        refusal = session_budget(policy, req.session_entropy) or screen_input(drive.compiled(policy), given)
        if refusal is not None:  # refused before the first token: no generation spent
            return refuse(refusal, policy, rid, audit, req.session, n_prompt, time.perf_counter() - t_check,
                          sinks.on_text, sinks.on_audited, req.key_id)
        governing = inside_structure(policy) if req.structure is not None else policy
        gate = drive.gate(drive.compiled(governing), req)
        on_text = sinks.on_text if restorer is None else _restoring(restorer, sinks.on_text)
        res = drive.drive(gate, req, on_text, on_decisions, sinks.cancelled)
        if restorer is not None:
            _restored(res, restorer, sinks.on_text)
    except GenerationFailed as e:  # the engine or upstream failed: what was decided still counts
        _failed(req, audit, on_decisions, e.result, e.cause)
        raise
    except EngineError as e:  # before generation began (tokenizing, rendering the template)
        res = partial_result(None, n_prompt, time.perf_counter() - t0)
        _failed(req, audit, on_decisions, res, e)
        raise GenerationFailed(res, e) from e
    except Exception as e:  # ingate's own fault outside the stream: fail closed, audited
        if gate is not None:
            gate.fail("ingate", e)
            on_decisions(gate.take_decisions())
        res = partial_result(gate, n_prompt, time.perf_counter() - t0)
        _failed(req, audit, on_decisions, res, e)
        raise GenerationFailed(res, e) from e
    if req.masking is not None:
        res.masked = req.masking.counts()
        if req.vault is not None:  # a session's: back to the worker, even from an engine process
            res.vault = req.masking.vault
    if audit is not None:
        audit.record_request(rid, policy.name, res, req.session, req.key_id)
    return res


def _masked(req: Request, audit: AuditLog | None) -> tuple[Request, Restorer | None]:
    """The request as the model may see it under the policy's mask_upstream (ingate.masking), and
    the restorer of its answer. The mask decisions are durable (keyed digests only, whatever the
    policy's store_text) before the model sees anything."""
    m = Masking.start(req.policy, req.vault)
    if m is None:
        return req, None
    req = replace(req, messages=m.messages(req.messages), stop=tuple(m.text(x) for x in req.stop), masking=m)
    if audit is not None:
        audit.record(req.request_id, req.policy.name, m.audit_decisions(), store_text=False)
    st = req.structure
    return req, m.restorer(None if st is None else True if st.pure_json else TOOL_MARKER if st.is_tools else None)


def _restoring(restorer: Restorer, on_text: TextSink | None) -> TextSink:
    def sink(text: str) -> None:
        out = restorer.feed(text)
        if out and on_text is not None:
            on_text(out)
    return sink


def _restored(res: Result, restorer: Restorer, on_text: TextSink | None) -> None:
    """The answer is over: what the restorer held goes out, and the result's text is the client's."""
    tail = restorer.flush()
    if tail and on_text is not None:
        on_text(tail)
    res.text = restorer.text


def _failed(req: Request, audit: AuditLog | None, on_decisions: DecisionSink, res: Result,
            cause: BaseException) -> None:
    """A failed generation's audit: an engine error decision (unless the gate audited its own
    failure) and the request row, finish_reason error."""
    if not any(d.rule_id in ("engine", "ingate", "upstream") for d in res.decisions):
        d = Decision("engine", Action.ERROR, res.completion_tokens, 0, b"", f"{type(cause).__name__}: {cause}")
        on_decisions([d])
        res.decisions.append(d)
    if audit is not None:
        audit.record_request(req.request_id, req.policy.name, res, req.session, req.key_id)


__all__ = ["HIDDEN_STATES", "LOGPROBS", "Core", "Drive", "Request", "Sinks", "govern"]
