"""The access line: one log record per HTTP request, written when its response has ended.

A pure ASGI middleware, so a stream's line is written when its last event is sent, with what the
generation did: the request id (the one in the response's `id`, the audit and `X-Request-Id`),
the route, the status, the key id, the model and policy, the finish reason, the tokens (prompt and
completion, as `usage` counts them), the time to first token and the decisions counted by action.

The path logged is the route's template (`/v1/chat/completions`), never the client's raw path or
query, and an error is logged by its code, never its message: both can hold what a client sent.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingate.drivers.base import Result

log = logging.getLogger("ingate.access")
SCOPE_KEY = "ingate.access"


@dataclass
class Access:
    """What one request's access line will say; the routes fill in what they learn."""

    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    method: str = ""
    route: str = "-"
    status: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def result(self, res: Result) -> None:
        """What the generation did (its text never: only counts and ids)."""
        self.fields |= {"finish_reason": str(res.finish_reason), "prompt_tokens": res.prompt_tokens,
                        "completion_tokens": res.completion_tokens,
                        "ttft_ms": round(res.ttft_s * 1000, 1) if res.ttft_s is not None else None,
                        "decisions": {str(a): n for a, n in sorted(Counter(d.action for d in res.decisions).items())},
                        "rollbacks": res.rollbacks}


def of(scope: Scope) -> Access:
    """The request's access record (a detached one when the app runs without the middleware)."""
    rec = scope.get(SCOPE_KEY)
    return rec if isinstance(rec, Access) else Access()


def _route(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route that served the request (FastAPI names it in the scope once routed),
    a mount's path under it (`/console/*`), or `-`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    for r in routes:
        if isinstance(r, Mount) and r.path and scope.get("path", "").startswith(r.path + "/"):
            return r.path + "/*"
    return "-"


class AccessLog:
    """Wraps the app: gives each HTTP request an `Access` record and logs it once, at the end."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]):
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rec = Access(method=scope.get("method", ""))
        scope[SCOPE_KEY] = rec
        t0 = time.perf_counter()
        logged = False

        def done() -> None:
            nonlocal logged
            if not logged:
                logged = True
                rec.route = _route(self.routes, scope)
                fields = {"request_id": rec.request_id, "method": rec.method, "path": rec.route,
                          "status": rec.status, "duration_ms": round((time.perf_counter() - t0) * 1000, 1)}
                log.info("%s %s %s", rec.method, rec.route, rec.status, extra={"fields": fields | rec.fields})

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                rec.status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rec.request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done()

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            rec.status = rec.status or 500
            raise
        finally:
            if not rec.status:
                rec.status = 499  # the client went away before an answer began
            done()
