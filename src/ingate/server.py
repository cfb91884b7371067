"""OpenAI-compatible HTTP API over the governed loop.

Every existing OpenAI client works unchanged; what governance did rides along in a
`governance` field (in the final chunk when streaming). Extensions: the body field `policy`
(or header `X-Ingate-Policy`) picks one of the policies loaded at start.

This module is the app: routes, keys, the queue. What a request may say is ingate.api.schema;
how an answer is written is ingate.api.openai.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ingate import report
from ingate.api import access
from ingate.api.limits import KeyLimits, KeyMetrics
from ingate.api.openai import DONE, ApiError, Reply, generation_error, may_be_call, tool_answer
from ingate.api.schema import ChatRequest, CompletionRequest, GenerationRequest, parse
from ingate.core import LOGPROBS, Core
from ingate.drivers.base import Result
from ingate.gate.decision import Action, Decision
from ingate.keys import Grant, Keys
from ingate.metrics import Metrics
from ingate.policy import Policy
from ingate.refusal import DEFAULT_REFUSAL, Refusal, escalation, refuse
from ingate.store.audit import replica_id
from ingate.store.limits import LimitStore, MemoryLimitStore
from ingate.store.sessions import BUSY, ESCALATED, MemorySessionStore, SessionStore, StoreError
from ingate.store.vaults import MemoryVaults, VaultStore
from ingate.structure import Structure
from ingate.worker import Draining, Job, QueueFull, Worker


@dataclass
class ServerConfig:
    policies: dict[str, Policy]  # name -> policy; the first is the default
    api_keys: Keys = field(default_factory=Keys)  # who may call, what each key may use and see
    governance_detail: str = "minimal"  # what a client sees of governance unless its key says more
    max_queue: int = 16
    max_queue_wait: float | None = 120.0  # seconds a request may wait for a place before a 429
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    session_ttl: float = 3600.0
    sessions: SessionStore | None = None  # None: in this process's memory (MemorySessionStore)
    vaults: VaultStore | None = None  # session vaults (mask_upstream); None: in this process's memory
    drain_seconds: float = 30.0  # on SIGTERM: how long streams in flight may take to finish
    replica: str = field(default_factory=replica_id)  # names this replica in /metrics and the audit
    console: bool = False  # serve the console at /console (ingate.console), guarded by api_keys' admin keys
    limits: LimitStore | None = None  # the keys' limits' counts; None: this process's (ingate.api.limits)


log = logging.getLogger("ingate.server")
router = APIRouter()


def create_app(cores: Mapping[str, Core] | Core, config: ServerConfig) -> FastAPI:
    """`cores`: the model name -> core to serve (the first is the default), or one core, served
    under its own name: an `ingate.core.Core` with every policy of `config` compiled and warm."""
    if not config.policies:
        raise ValueError("at least one policy is needed")
    server = _Server(cores if isinstance(cores, Mapping) else {cores.name: cores}, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        server.draining = True
        # uvicorn has waited up to drain_seconds for the streams, then cancelled the rest: each
        # generation still running stops within a token (audited as cancelled) before its core closes
        for b in server.backends.values():
            if not await asyncio.to_thread(b.worker.drain, 10.0):
                log.error("model %s: a generation did not stop within 10 s of shutdown; closing its core", b.name)
            b.core.close()  # stop the engine process with the server

    app = FastAPI(title="ingate", version="0.1.0", lifespan=lifespan)
    app.state.server = server
    app.exception_handler(ApiError)(_api_error)
    app.exception_handler(Exception)(_unexpected)
    app.include_router(router)
    app.add_middleware(access.AccessLog, routes=app.router.routes)  # the access line (ingate.api.access)
    if config.console:
        from ingate.console import mount

        mount(app)
    return app


@dataclass
class Backend:
    """One served model: its core and the worker that feeds it (the core's `max_concurrency` threads)."""

    name: str
    core: Core
    worker: Worker

    def health(self) -> dict:
        info = self.core.info()
        out = {k: info[k] for k in ("layout", "threads", "upstream", "upstream_model", "capabilities", "batch",
                                    "prefix_cache", "n_seq") if k in info}
        proc = info.get("process")
        if proc is not None:
            out |= {"pid": proc["pid"], "alive": proc["alive"], "restarts": proc["restarts"],
                    "last_crash": proc["last_crash"]}
        if self.worker.restart_error:
            out["restart_error"] = self.worker.restart_error
        return out


class _Server:
    """What the routes share: the configuration, the served models, their workers and the sessions."""

    def __init__(self, cores: Mapping[str, Core], config: ServerConfig):
        if not cores:
            raise ValueError("at least one model is needed")
        self.config = config
        self.draining = False  # set on SIGTERM: /readyz answers 503 and new requests are turned away
        self.metrics = Metrics()
        self.metrics.replica.labels(config.replica).set(1)
        self.sessions: SessionStore = config.sessions or MemorySessionStore(config.session_ttl)
        vaults = config.vaults or MemoryVaults(config.session_ttl)
        self.backends = {name: Backend(name, core, Worker(core, config.max_queue, self.metrics, self.sessions,
                                                          threads=core.max_concurrency,
                                                          max_wait_s=config.max_queue_wait, vaults=vaults))
                         for name, core in cores.items()}
        self.model_id: str = next(iter(self.backends))  # the default model
        self.limits = KeyLimits(config.limits or MemoryLimitStore(), KeyMetrics(self.metrics.registry))
        for b in self.backends.values():  # charged before the client hears the end
            b.worker.observers.append(lambda job, res: self.limits.charge(job.grant, job.request_id, res))

    async def refresh_metrics(self) -> None:
        """Bring the gauges read at scrape time up to date: the queue, and each core's engine report."""
        self.metrics.queue.set(sum(b.worker.depth for b in self.backends.values()))
        await asyncio.to_thread(self.limits.refresh, self.config.api_keys.grants())
        infos = {name: await asyncio.to_thread(b.core.info) for name, b in self.backends.items()}
        self.metrics.engines = infos
        self.metrics.engine_up.set(1 if all((i.get("process") or {}).get("alive", True) for i in infos.values())
                                   else 0)

    def drain(self) -> None:
        """The drain time is over: cancel every generation still running or queued. Each stops within
        a token, is audited as cancelled, and its client gets an error event (`shutting_down`)."""
        for b in self.backends.values():
            b.worker.drain(0.0)

    def backend(self, model: str | None) -> Backend:
        """The model a request names. With one model served, any name routes to it (as a llama.cpp
        server does); with several, an unknown name is a 404 that lists them."""
        if model is None or len(self.backends) == 1:
            return self.backends[self.model_id]
        if model not in self.backends:
            raise ApiError(404, f"the model {model!r} does not exist; this server has: {', '.join(self.backends)}",
                           "model", "model_not_found")
        return self.backends[model]

    async def serve(self, request: Request, req: GenerationRequest, grant: Grant):
        """Queue (or refuse) one generation; answer as a whole body or as a stream."""
        if self.draining:
            raise ApiError(503, "this replica is shutting down; retry on another", code="shutting_down",
                           type_="server_error", headers={"Retry-After": "1"})
        b = self.backend(req.model)
        structure = req.structure()
        prompt = req.engine_input(structure)
        policy = _choose_policy(request, req, self.config, grant.policies)
        params, stop = req.generation(self.config.default_max_tokens, self.config.max_tokens_cap)
        if params.logprobs is not None and LOGPROBS not in b.core.capabilities:
            raise ApiError(400, f"the upstream model {b.name!r} does not declare the logprobs capability (its "
                                "models file entry says what it can); ask without logprobs", "logprobs",
                           "logprobs_unsupported")
        session = request.headers.get("x-session-id") or req.user
        acc = access.of(request.scope)
        acc.fields |= {"model": b.name, "policy": policy.name, "stream": req.stream}
        job = Job(prompt, policy, params, stop, asyncio.get_running_loop(), asyncio.Queue(), session=session,
                  structure=structure, grant=grant, request_id=acc.request_id)
        counted = await self.limits.admit(grant, job.request_id)  # 429 over the key's limits
        try:
            await self._start(b, job)
        except ApiError:  # turned away after all (queue full, session busy): the request does not count
            if counted:
                await self.limits.release(grant, job.request_id)
            raise
        reply = Reply.new(job.request_id, b.name, req.chat)
        governance = functools.partial(self._governance, job, grant.detail or self.config.governance_detail)
        # a tool call is released whole: its text is held until the response ends, then answered
        tools = structure if structure is not None and structure.is_tools and req.chat else None
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, reply, usage, governance, self, tools, acc),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts: list[str] = []
        res = await _collect(request, job, parts)
        acc.result(res)
        if res.finish_reason == "cancelled" and self.draining:  # nothing was sent: the client retries elsewhere
            raise ApiError(503, "this replica shut down during the request; retry on another", code="shutting_down",
                           type_="server_error", headers={"Retry-After": "1"})
        text = "".join(parts)
        return reply.body(res, text, governance(res),
                          tool_answer(tools, text, res.finish_reason, job.request_id) if tools else None)

    async def _start(self, b: Backend, job: Job) -> None:
        """Hand the job to the model's worker once its session admits it (ingate.store.sessions): an
        escalated session is refused here, a session at its limit of requests in flight gets a 429."""
        refusal = await self._admit(b, job) if job.session else None
        if refusal is not None:  # answered here: no queue slot, no engine
            res = refuse(refusal, job.policy, job.request_id, b.core.audit, job.session,
                         on_text=lambda t: job.events.put_nowait(("text", t)), key_id=job.grant.key_id)
            self.metrics.observe(job.policy.name, res)
            self.limits.charge(job.grant, job.request_id, res)
            job.events.put_nowait(("done", res))
            return
        try:
            b.worker.submit(job)
        except QueueFull:
            await asyncio.to_thread(b.worker.end_session, job, [], 0.0)
            raise ApiError(429, f"the server is busy ({self.config.max_queue} requests queued for {b.name}); retry "
                           "shortly", code="queue_full", type_="rate_limit_error", headers={"Retry-After": "1"}) \
                from None

    async def _admit(self, b: Backend, job: Job) -> Refusal | None:
        """`begin` the request in its session: None to go on (a place reserved), or the refusal."""
        assert job.session is not None
        pol = job.policy
        try:
            ticket = await asyncio.to_thread(self.sessions.begin, job.session_key, job.request_id,
                                             pol.escalate_after)
        except StoreError as e:
            self.metrics.session_store_errors.labels("begin").inc()
            log.error("request %s: %s", job.request_id, e)
            if not pol.needs_session_state:  # nothing to decide from it: serve, count what we can
                return None
            if pol.on_store_error == "allow":
                d = Decision("session", Action.ERROR, 0, 0, b"", f"session store unavailable ({e}); served without "
                             "the session's state (on_store_error: allow)")
                if b.core.audit is not None:
                    b.core.audit.record(job.request_id, pol.name, [d])
                job.session = None
                return None
            d = Decision("session", Action.REFUSE, 0, 0, b"", f"session store unavailable ({e}); refused "
                         "(on_store_error: refuse)")
            return Refusal(d, pol.refusal or DEFAULT_REFUSAL)
        job.session_state = ticket.state
        if ticket.verdict == ESCALATED:
            return escalation(pol, ticket.state.violations)
        if ticket.verdict == BUSY:
            raise ApiError(429, f"session {job.session!r} has {ticket.state.in_flight} request(s) in flight that could "
                                f"still reach its limit of {pol.escalate_after} violations; retry when they end",
                           code="session_busy", type_="rate_limit_error", headers={"Retry-After": "1"})
        job.session_entropy, job.reserved = ticket.state.entropy_spent, True
        return None

    def _governance(self, job: Job, level: str, res: Result) -> dict:
        st = job.session_state  # after the request when it ran, before it when it was refused
        ses = None if not job.session else {
            "id": job.session, "violations": st.violations if st else 0, "escalate_after": job.policy.escalate_after,
            "entropy_spent": round(st.entropy_spent, 4) if st else 0.0}
        return report.governance(job.policy, res, level, ses)


def _server(request: Request) -> _Server:
    return request.app.state.server


# ---- routes ------------------------------------------------------------------------------------
@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 while every local engine runs; 503 while one's process is down (restarting after a crash).
    `engine` is the default model's; `models` has every model's. An upstream's health is its
    own: ingate does not probe it (it reports each failure to the request that met it).
    `sessions`: the session store, and whether it answers (a store that is down does not make this
    replica unhealthy: each policy's on_store_error decides what its requests get)."""
    s = _server(request)
    health = {name: b.health() for name, b in s.backends.items()}
    up = all(h.get("alive", True) for h in health.values())
    body = {"status": "ok" if up else "restarting", "model": s.model_id, "policies": list(s.config.policies),
            "queue": sum(b.worker.depth for b in s.backends.values()), "engine": health[s.model_id],
            "models": health, "sessions": await asyncio.to_thread(s.sessions.health)}
    return JSONResponse(body, status_code=200 if up else 503)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness, apart from liveness (/healthz): 503 while this replica should get no new requests:
    shutting down, a local engine restarting, or a session store that does not answer."""
    s = _server(request)
    sessions = await asyncio.to_thread(s.sessions.health)
    checks = {"accepting": not s.draining,
              "engines": all(b.health().get("alive", True) for b in s.backends.values()),
              "sessions": bool(sessions.get("ok"))}
    ready = all(checks.values())
    return JSONResponse({"ready": ready, "replica": s.config.replica, "checks": checks},
                        status_code=200 if ready else 503)


@router.get("/metrics")
async def prometheus(request: Request) -> Response:
    s = _server(request)
    await s.refresh_metrics()
    return Response(s.metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(request: Request) -> dict:
    s = _server(request)
    _auth(request, s.config)
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                        "owned_by": "upstream" if "upstream" in b.health() else "ingate"}
                                       for name, b in s.backends.items()]}


@router.post("/v1/chat/completions")
async def chat(request: Request):
    return await _generation_route(request, ChatRequest)


@router.post("/v1/completions")
async def completions(request: Request):
    return await _generation_route(request, CompletionRequest)


async def _generation_route(request: Request, model: type[GenerationRequest]):
    s = _server(request)
    grant = _auth(request, s.config)
    access.of(request.scope).fields["key_id"] = grant.key_id
    req = parse(await _body(request, s.config.max_body_bytes), model)
    return await s.serve(request, req, grant)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    access.of(request.scope).fields["error"] = exc.code  # its code: the message may quote what the client sent
    return exc.response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """Anything else is our bug: logged with an id, and the client gets the id, never the text."""
    rid = uuid.uuid4().hex[:12]
    log.error("request %s %s failed: %s", rid, request.url.path, exc, exc_info=exc)
    return ApiError(500, f"internal error (request {rid}; the server's log has the details)",
                    type_="server_error", code="internal_error").response()


# ---- the pieces ----------------------------------------------------------------------------------
async def _body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > limit:
        raise ApiError(413, f"request body of {size} bytes is over the limit of {limit}")
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {limit}")
    return body


def _auth(request: Request, config: ServerConfig) -> Grant:
    """What the request's key may use and see (everything, at the server's detail, when auth is off)."""
    if not config.api_keys:
        return Grant()
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    grant = config.api_keys.lookup(key) if key else None
    if grant is None:
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", type_="authentication_error")
    return grant


def _choose_policy(request: Request, req: GenerationRequest, config: ServerConfig,
                   allowed: frozenset[str] | None) -> Policy:
    name = req.policy or request.headers.get("x-ingate-policy") or next(iter(config.policies))
    if name not in config.policies:
        known = [p for p in config.policies if allowed is None or p in allowed]
        raise ApiError(400, f"unknown policy {name!r}; known: {', '.join(known)}", "policy", "unknown_policy")
    if allowed is not None and name not in allowed:
        raise ApiError(403, f"this API key may not use policy {name!r}; allowed: {', '.join(sorted(allowed))}",
                       "policy", "policy_not_allowed", type_="permission_error")
    return config.policies[name]


async def _collect(request: Request, job: Job, parts: list[str]) -> Result:
    """Wait for a non-streaming job, cancelling it if the client goes away."""
    while True:
        try:
            kind, val = await asyncio.wait_for(job.events.get(), timeout=0.25)
        except TimeoutError:
            if await request.is_disconnected():
                job.cancel.set()
            continue
        if kind == "text":
            parts.append(val)
        elif kind == "done":
            return val
        else:
            raise generation_error(val, job.request_id)


async def _stream(job: Job, reply: Reply, usage: bool, governance: Callable[[Result], dict], server: _Server,
                  tools: Structure | None = None, acc: access.Access | None = None):
    """The response as server-sent events. Under `tools` the text is held until the end and sent
    as one message: the content, or whole tool calls. Under tool_choice auto, text that can no
    longer be a call is an answer: it streams from there."""
    done = False
    held: list[str] = []
    try:
        first = reply.first_chunk()
        if first is not None:
            yield first
        while True:
            kind, val = await job.events.get()
            if kind == "done" and acc is not None:
                acc.result(val)
            if kind == "text" and tools is not None:
                held.append(val)
                if not may_be_call(tools, "".join(held)):  # an answer in text: stream it
                    yield reply.chunk("".join(held))
                    held.clear()
                    tools = None
            elif kind == "text":
                yield reply.chunk(val)
            elif kind == "done" and val.finish_reason == "cancelled" and server.draining:
                yield reply.error_chunk(generation_error(Draining("this replica shut down mid-stream; what was "
                                                                  "sent is governed; retry on another"),
                                                         job.request_id))
                break
            elif kind == "done":
                ans = tool_answer(tools, "".join(held), val.finish_reason, job.request_id) if tools else None
                if ans is not None and (ans.content or ans.tool_calls):
                    yield reply.chunk(ans.content, tool_calls=ans.tool_calls)
                yield reply.final_chunk(val, governance(val), ans)
                if usage:
                    yield reply.usage_chunk(val)
                break
            else:
                yield reply.error_chunk(generation_error(val, job.request_id))
                break
        yield DONE
        done = True
    except Exception as e:  # a fault after the response began (a report, a chunk): logged, generic to the client
        yield reply.error_chunk(generation_error(e, job.request_id))
        yield DONE
    finally:
        if not done:  # the client went away, or the stream failed: stop generating within one token
            job.cancel.set()
