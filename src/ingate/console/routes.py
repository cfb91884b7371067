"""The console's routes, all under /console. Every one of them is behind the admin guard (the router's
dependency) except the sign-in form's POST; every URL the page uses is relative, so the console
works on loopback and under any prefix a reverse proxy adds.

  GET  /console                 a redirect to console/ (relative)
  GET  /console/                the page (static/index.html)
  GET  /console/static/...      its script, styles and the vendored charting library
  GET  /console/api/info        the models, policies and detail level the page offers
  POST /console/api/playground  one governed (or, at full detail, ungoverned) run, as server-sent events
  GET  /console/api/decisions   the audit, followed live, as server-sent events
  GET  /console/api/metrics     the /metrics registry as JSON
  POST /console/api/lab/check   `ingate check --text` on a pasted or loaded policy
  POST /console/api/lab/sample  a policy over a pasted list or recent traffic: what it would block
  POST /console/login, /console/logout
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from ingate import __version__
from ingate.api.openai import ApiError
from ingate.console import auth, feed, lab, perf, playground
from ingate.console.traffic import Traffic
from ingate.keys import Grant

STATIC = Path(str(resources.files("ingate.console").joinpath("static")))
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
SSE_HEADERS = {**auth.HEADERS, "X-Accel-Buffering": "no"}  # nginx: pass each event on at once


@dataclass
class Console:
    """What the console's routes share: the server, its admin guard, the traffic sample and the
    static files (by their path under static/: nothing else is ever served)."""

    server: Any  # ingate.server._Server (not imported: the server imports the console)
    guard: auth.Guard
    traffic: Traffic
    files: dict[str, Path]

    @classmethod
    def of(cls, server: Any) -> Console:
        files = {str(p.relative_to(STATIC)): p for p in STATIC.rglob("*") if p.is_file() and p.suffix in TYPES}
        if "index.html" not in files:
            raise RuntimeError(f"the console's page is missing from {STATIC}: reinstall ingate (its package data "
                               "holds ingate/console/static)")
        return cls(server, auth.Guard(server.config.api_keys), Traffic(), files)


def _console(request: Request) -> Console:
    return request.app.state.console


def admin(request: Request) -> Grant:
    return auth.require(_console(request).guard, request)


router = APIRouter(prefix="/console", dependencies=[Depends(admin)])
open_router = APIRouter(prefix="/console")


@open_router.post("/login")
async def login(request: Request) -> Response:
    return await auth.login(_console(request).guard, request)


@open_router.post("/logout")
async def logout() -> Response:
    return auth.logout()


@router.get("")
async def bare() -> Response:
    return Response(status_code=307, headers={**auth.HEADERS, "Location": "console/"})


@router.get("/")
async def index(request: Request) -> Response:
    return _file(_console(request), "index.html")


@router.get("/static/{name:path}")
async def static(name: str, request: Request) -> Response:
    return _file(_console(request), name)


def _file(c: Console, name: str) -> Response:
    path = c.files.get(name)
    if path is None:
        raise ApiError(404, f"the console has no file {name!r}", code="not_found")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=auth.HEADERS)


@router.get("/api/info")
async def info(request: Request, grant: Annotated[Grant, Depends(admin)]) -> JSONResponse:
    c = _console(request)
    s = c.server
    level = s.config.governance_detail
    return JSONResponse({
        "version": __version__, "models": list(s.backends), "policies": list(s.config.policies),
        "level": level, "ungoverned": level == "full", "lab_loaded": level == "full",
        "auth": c.guard.on, "key_id": grant.key_id, "max_tokens_cap": s.config.max_tokens_cap,
        "traffic": len(c.traffic), "audits": len(feed.audits(s)), "replica": s.config.replica,
    }, headers=auth.HEADERS)


@router.post("/api/playground")
async def play(request: Request, grant: Annotated[Grant, Depends(admin)]) -> StreamingResponse:
    s = _console(request).server
    body = playground.parse(await _body(request, s.config.max_body_bytes), playground.Play)
    job, policy, model = playground.start(s, body, grant)
    return StreamingResponse(playground.events(job, policy, model, s.config.governance_detail),
                             media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/api/decisions")
async def decisions(request: Request, backfill: int = feed.BACKFILL) -> StreamingResponse:
    s = _console(request).server
    if not 0 <= backfill <= 2000:
        raise ApiError(400, "backfill: 0 to 2000 rows", "backfill")
    logs = feed.audits(s)
    if not logs:
        raise ApiError(409, "this server keeps no audit, so there are no decisions to follow", code="no_audit")
    return StreamingResponse(feed.follow(logs, s.config.governance_detail, request.is_disconnected, backfill),
                             media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/api/metrics")
async def metrics(request: Request) -> JSONResponse:
    return JSONResponse(await perf.snapshot(_console(request).server), headers=auth.HEADERS)


@router.post("/api/lab/check")
async def lab_check(request: Request) -> JSONResponse:
    s = _console(request).server
    body = playground.parse(await _body(request, s.config.max_body_bytes), lab.CheckBody)
    out = await asyncio.to_thread(lambda: lab.check(lab.candidate(s, body), body.text))
    return JSONResponse(out, headers=auth.HEADERS)


@router.post("/api/lab/sample")
async def lab_sample(request: Request) -> JSONResponse:
    c = _console(request)
    s = c.server
    body = playground.parse(await _body(request, s.config.max_body_bytes), lab.SampleBody)
    out = await asyncio.to_thread(lambda: lab.sample(lab.candidate(s, body), body, c.traffic))
    return JSONResponse(out, headers=auth.HEADERS)


async def _body(request: Request, limit: int) -> bytes:
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, f"request body of {len(body)} bytes is over the limit of {limit} (--max-body-bytes)")
    return body
