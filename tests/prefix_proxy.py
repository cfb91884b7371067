"""Servers in a thread of the test process: a reverse proxy that puts a server under a path prefix,
and any ASGI app on loopback.

The proxy does what `location /ingate/ { proxy_pass http://127.0.0.1:8000/; }` does in nginx:
`/ingate/console/` reaches the server as `/console/`, and nothing in the answer is rewritten. A
page that works through it uses no absolute URL.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefix_proxy(upstream: str, prefix: str) -> Starlette:
    """An app that serves `upstream` under `prefix` (e.g. "/ingate/")."""
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(60.0, read=None))

    async def forward(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(prefix):
            return Response(f"only {prefix} is proxied", status_code=404)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP]
        headers += [("x-forwarded-prefix", prefix.rstrip("/")), ("x-forwarded-host", request.url.netloc)]
        req = client.build_request(request.method, "/" + path[len(prefix):], params=request.query_params,
                                   headers=headers, content=await request.body())
        r = await client.send(req, stream=True)
        resp = StreamingResponse(r.aiter_raw(), status_code=r.status_code, background=BackgroundTask(r.aclose))
        resp.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in r.headers.multi_items()
                            if k.lower() not in HOP]  # every Set-Cookie, Location as the server wrote it
        return resp

    methods = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


class Threaded:
    """An ASGI app served by uvicorn in a daemon thread of this process, on a free loopback port."""

    def __init__(self, app, timeout: float = 30.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"test-server-{self.port}")
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the in-process server on port {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
