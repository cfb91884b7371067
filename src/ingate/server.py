"""OpenAI-compatible HTTP API over the governed loop.

Every existing OpenAI client works unchanged; what governance did rides along in a
`governance` field (in the final chunk when streaming). Extensions: the body field `policy`
(or header `X-Ingate-Policy`) picks one of the policies loaded at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ingate import report
from ingate.audit import AuditLog
from ingate.engines import ContextFull, EngineCrashed
from ingate.gate.decision import Action, Decision
from ingate.loop import GenerationParams, Result
from ingate.metrics import Metrics
from ingate.policy import Policy
from ingate.sampling import SamplingParams
from ingate.session import MemorySessionStore
from ingate.worker import Job, QueueFull, Worker


@dataclass(frozen=True)
class Grant:
    """What one API key may do: use these policies (None: all), see this governance detail
    (None: the server's `governance_detail`). Written KEY[:POLICY+POLICY[:minimal|full]]."""

    policies: frozenset[str] | None = None
    detail: str | None = None


@dataclass
class ServerConfig:
    policies: dict[str, Policy]  # name -> policy; the first is the default
    api_keys: dict[str, Grant] = field(default_factory=dict)  # key -> what it may use and see
    governance_detail: str = "minimal"  # what a client sees of governance unless its key says more
    max_queue: int = 16
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    session_ttl: float = 3600.0


log = logging.getLogger("ingate.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=self.headers)


# ---- request shapes ----------------------------------------------------------------------------
class _Lenient(BaseModel):
    # Clients send fields we do not use: ignore them, do not fail. Types are strict, as the OpenAI
    # API has them: "max_tokens": "10" or "stream": "yes" is a 400 naming the field, not a guess.
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[Any] | None = None  # before content: its validator reads it
    content: str | list[ContentPart] | None = Field(default=None, validate_default=True)

    @field_validator("content")
    @classmethod
    def _content_required(cls, v, info: ValidationInfo):
        """OpenAI: content is required, except on an assistant message that carries tool calls."""
        if v is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError(f"content is required on a {info.data.get('role', 'chat')} message (a string or a "
                             "list of content parts); it is missing or null")
        return v

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Common(_Lenient):
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    logprobs: bool | int | None = None
    user: str | None = None
    policy: str | None = None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Common):
    prompt: str | list[str]


_FIELD_NAMES = frozenset(name for m in (ChatRequest, CompletionRequest, Message, ContentPart, StreamOptions)
                         for name in m.model_fields)


# ---- the app -----------------------------------------------------------------------------------
def create_app(core, config: ServerConfig) -> FastAPI:
    """`core`: an ingate.core.EngineCore (or LocalCore) with every policy of `config` compiled and warm."""
    if not config.policies:
        raise ValueError("at least one policy is needed")
    metrics = Metrics()
    sessions = MemorySessionStore(config.session_ttl)
    worker = Worker(core, config.max_queue, metrics, sessions)
    model_id = core.name
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.close()
        core.close()  # stop the engine process with the server

    app = FastAPI(title="ingate", version="0.1.0", lifespan=lifespan)
    app.state.worker = worker

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """Anything else is our bug: logged with an id, and the client gets the id, never the text."""
        rid = uuid.uuid4().hex[:12]
        log.error("request %s %s failed: %s", rid, request.url.path, exc, exc_info=exc)
        return ApiError(500, f"internal error (request {rid}; the server's log has the details)",
                        type_="server_error", code="internal_error").response()

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the engine runs; 503 while its process is down (restarting after a crash)."""
        eng = _engine_health(core)
        up = eng.get("alive", True)
        body = {"status": "ok" if up else "restarting", "model": model_id, "policies": list(config.policies),
                "queue": worker.depth, "engine": eng}
        if worker.restart_error:
            body["engine"]["restart_error"] = worker.restart_error
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.queue.set(worker.depth)
        metrics.engine_up.set(1 if _engine_health(core).get("alive", True) else 0)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _auth(request, config)
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "ingate"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        grant = _auth(request, config)
        req = await _parse(request, ChatRequest, config)
        max_tokens = req.max_completion_tokens or req.max_tokens
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages if m.role != "tool"]
        return await _serve(request, req, messages, max_tokens, grant, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        grant = _auth(request, config)
        req = await _parse(request, CompletionRequest, config)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "only one prompt per request is supported; send one string", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise ApiError(400, "prompt is empty; give the text to complete", "prompt")
        return await _serve(request, req, prompt, req.max_tokens, grant, chat=False)

    async def _serve(request: Request, req: _Common, messages, max_tokens: int | None, grant: Grant, chat: bool):
        policy = _choose_policy(request, req, config, grant.policies)
        if req.n != 1:
            raise ApiError(400, "n > 1 is not supported: ingate generates one governed choice per request; "
                                "send n separate requests", "n")
        top: int | None = None
        if chat and req.logprobs:
            top = getattr(req, "top_logprobs", None) or 0
        elif chat and getattr(req, "top_logprobs", None) is not None:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        elif not chat and req.logprobs is not None:
            raise ApiError(400, "logprobs on /v1/completions is not supported; use /v1/chat/completions "
                                "with logprobs: true", "logprobs")
        mt = max_tokens or config.default_max_tokens
        if mt > config.max_tokens_cap:
            raise ApiError(400, f"max_tokens {mt} is over this server's cap of {config.max_tokens_cap}",
                           "max_tokens")
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise ApiError(400, "stop takes up to 4 non-empty strings", "stop")
        params = GenerationParams(max_tokens=mt, logprobs=top, sampling=SamplingParams(
            temperature=req.temperature, top_p=req.top_p,
            seed=req.seed if req.seed is not None else int(time.time_ns() % 2**31)))
        loop = asyncio.get_running_loop()
        session = request.headers.get("x-session-id") or req.user
        job = Job(messages, policy, params, stop, loop, asyncio.Queue(), session=session)
        state = sessions.get(session) if session and policy.escalate_after else None
        if state is not None and policy.escalate_after is not None and state.violations >= policy.escalate_after:
            refused = _refuse(core.audit, policy, job, state.violations)
            metrics.observe(policy.name, refused)
            job.events.put_nowait(("text", policy.refusal))
            job.events.put_nowait(("done", refused))
        else:
            _submit(worker, job, config)
        rid = ("chatcmpl-" if chat else "cmpl-") + job.request_id[:24]
        created = int(time.time())
        level = grant.detail or config.governance_detail

        def governance(res: Result) -> dict:
            st = sessions.get(job.session) if job.session else None
            ses = None if not job.session else {
                "id": job.session, "violations": st.violations if st else 0, "escalate_after": policy.escalate_after,
                "entropy_spent": round(st.entropy_spent, 4) if st else 0.0}
            return report.governance(policy, res, level, ses)

        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(job, rid, created, model_id, chat, usage, governance),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        parts: list[str] = []
        res = await _collect(request, job, parts)
        text = "".join(parts)
        choice: dict[str, Any] = {"index": 0, "finish_reason": res.finish_reason,
                                  "logprobs": {"content": res.logprobs} if res.logprobs is not None else None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model_id, "choices": [choice], "usage": _usage(res), "governance": governance(res)}

    return app


def _engine_health(core) -> dict:
    info = core.info()
    out = {"layout": info.get("layout"), "threads": info.get("threads")}
    proc = info.get("process")
    if proc is not None:
        out |= {"pid": proc["pid"], "alive": proc["alive"], "restarts": proc["restarts"],
                "last_crash": proc["last_crash"]}
    return out


def _generation_error(err: BaseException, request_id: str) -> ApiError:
    """The OpenAI-shaped error for a generation the engine could not finish. An unexpected error's
    text stays in the server's log (it may quote a policy); the client gets the request id."""
    if isinstance(err, EngineCrashed):
        return ApiError(503, str(err), code="engine_crashed", type_="server_error", headers={"Retry-After": "1"})
    if isinstance(err, ContextFull):
        return ApiError(400, str(err), code="context_length_exceeded")
    log.error("request %s failed: %s: %s", request_id, type(err).__name__, err)
    return ApiError(500, f"generation failed with an internal error (request {request_id}; the server's log "
                         "and audit have the details)", type_="server_error", code="internal_error")


def _submit(worker: Worker, job: Job, config: ServerConfig) -> None:
    try:
        worker.submit(job)
    except QueueFull:
        raise ApiError(429, f"the server is busy ({config.max_queue} requests queued); retry shortly",
                       code="queue_full", type_="rate_limit_error", headers={"Retry-After": "1"}) from None


def _refuse(audit: AuditLog | None, policy: Policy, job: Job, violations: int) -> Result:
    """Escalation: the session has spent its allowance; refuse before any generation, audited."""
    d = Decision("session", Action.REFUSE, 0, 0, b"",
                 f"session has {violations} violations (escalate_after: {policy.escalate_after}); refused")
    res = Result.refused(policy.refusal, d)
    if audit is not None:
        audit.record(job.request_id, policy.name, [d])
        audit.record_request(job.request_id, policy.name, res, job.session)
    return res


async def _parse(request: Request, model: type[BaseModel], config: ServerConfig) -> Any:
    size = request.headers.get("content-length")
    if size and size.isdigit() and int(size) > config.max_body_bytes:
        raise ApiError(413, f"request body of {size} bytes is over the limit of {config.max_body_bytes}")
    body = await request.body()
    if len(body) > config.max_body_bytes:
        raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {config.max_body_bytes}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply to parse; an OpenAI request needs a few "
                            "levels") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; an OpenAI request needs a few levels") from None
    except ValidationError as e:
        err = e.errors()[0]
        # the field's path, without the union member names pydantic adds ('stop.str' is 'stop')
        path = [x for x in err["loc"] if isinstance(x, int) or x in _FIELD_NAMES]
        loc = "".join(f"[{x}]" if isinstance(x, int) else ("." if i else "") + str(x) for i, x in enumerate(path))
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "required field is missing"
        raise ApiError(400, f"{loc}: {msg}", param=loc or None) from None


def _auth(request: Request, config: ServerConfig) -> Grant:
    """What the request's key may use and see (everything, at the server's detail, when auth is off)."""
    if not config.api_keys:
        return Grant()
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    if key not in config.api_keys:
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", type_="authentication_error")
    return config.api_keys[key]


def _choose_policy(request: Request, req: _Common, config: ServerConfig, allowed: frozenset[str] | None) -> Policy:
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
            raise _generation_error(val, job.request_id)


async def _stream(job: Job, rid: str, created: int, model_id: str, chat: bool, usage: bool,
                  governance: Callable[[Result], dict]):
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None = None, role: bool = False,
              extra: dict | None = None, logprobs: list | None = None) -> str:
        if chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if delta_text is not None:
                delta["content"] = delta_text
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish,
                                      "logprobs": {"content": logprobs} if logprobs is not None else None}
        else:
            choice = {"index": 0, "text": delta_text or "", "finish_reason": finish, "logprobs": None}
        body = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [choice]}
        if extra:
            body.update(extra)
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    done = False
    try:
        if chat:
            yield chunk("", role=True)
        while True:
            kind, val = await job.events.get()
            if kind == "text":
                yield chunk(val)
            elif kind == "done":
                yield chunk(None if chat else "", finish=val.finish_reason, logprobs=val.logprobs,
                            extra={"governance": governance(val)})
                if usage:
                    body = {"id": rid, "object": obj, "created": created, "model": model_id, "choices": [],
                            "usage": _usage(val)}
                    yield f"data: {json.dumps(body)}\n\n"
                break
            else:
                e = _generation_error(val, job.request_id)
                err = {"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}}
                yield f"data: {json.dumps(err)}\n\n"
                break
        yield "data: [DONE]\n\n"
        done = True
    finally:
        if not done:  # the client went away mid-stream: stop generating within one token
            job.cancel.set()


def _usage(res: Result) -> dict:
    return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens}
