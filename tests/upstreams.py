"""Real upstreams on loopback for the upstream tests, and what sits between ingate and them.

* `llama_server()`: llama-cpp-python's own OpenAI-compatible server over the embedded GGUF, a real
  upstream (or the one CI started: $INGATE_TEST_UPSTREAM).
* `FaultProxy`: forwards to a real upstream and, when told, cuts the stream, corrupts an event,
  stalls, never ends, answers 500 or 429, or strips what ingate pushed down. It records what it
  forwarded, event by event, and notices the moment ingate closes its connection: that is how the
  tests prove cancellation from the upstream's side.
* `CaptureUpstream`: a test double for the answer, said so here: a real HTTP server that records
  every body ingate sends it (what the masking tests check) and answers by echoing the last message.
* `ScriptedUpstream`: a test double, said so here: it replays fixed text as an OpenAI stream, split
  into SSE events and TCP writes exactly where a hypothesis example says. No real server lets a test
  choose where its stream splits, and the property is about exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_server(log_dir: Path, cpus: set[int] | None = None, use_given: bool = True):
    """The base URL (…/v1) of llama-cpp-python's server over the embedded model, started here and
    stopped after, unless $INGATE_TEST_UPSTREAM names one already running (CI starts it).
    `cpus`: the CPUs it may run on (one thread each), as an upstream on its own machine would."""
    given = os.environ.get("INGATE_TEST_UPSTREAM") if use_given else None
    if given:
        yield given.rstrip("/")
        return
    from ingate.engines.llamacpp import default_model_path

    port = free_port()
    log = open(log_dir / "llama-server.log", "wb")  # noqa: SIM115  (closed below)
    threads = str(len(cpus) if cpus else 2)
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", threads,
                             "--n_threads_batch", threads, "--verbose", "False"], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(url, proc, log_dir / "llama-server.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def ingate_serve(*flags: str, env: dict | None = None, ready: str = "/readyz") -> tuple[subprocess.Popen, str]:
    """A real `ingate serve` on a free port with `flags`, once `ready` answers 200: (process, base URL)."""
    from conftest import INGATE

    port = free_port()
    # warnings and errors only on the pipe (read when it fails): access lines would fill it unread
    proc = subprocess.Popen([INGATE, "serve", "--port", str(port), *flags],
                            env={"INGATE_LOG_LEVEL": "warning"} | dict(env or os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ingate serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + ready, timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"ingate serve was not ready in {START_TIMEOUT_S:g} s")


def wait_ready(url: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"the upstream server exited with {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the upstream server at {url} did not come up in {START_TIMEOUT_S:g} s")


# ---- the fault-injecting proxy -------------------------------------------------------------------
@dataclass
class Forwarded:
    """One request through the proxy: what ingate asked, and what the proxy sent back."""

    path: str
    body: dict
    events: list[str] = field(default_factory=list)  # the data of each event forwarded, in order
    times: list[float] = field(default_factory=list)  # time.monotonic() at which each was forwarded
    opened: float = field(default_factory=time.monotonic)  # when the request arrived
    closed: float | None = None  # when the relay ended (the stream ended, or ingate closed it)
    client_closed: bool = False  # ingate closed the connection before the upstream's stream ended

    def content(self, upto: int | None = None) -> str:
        """The text the forwarded events carried (the first `upto` of them)."""
        out = []
        for data in self.events[:upto]:
            try:
                c = (json.loads(data).get("choices") or [{}])[0]
            except (json.JSONDecodeError, AttributeError):  # [DONE], or an event the proxy corrupted
                continue
            out.append((c.get("delta") or {}).get("content") or c.get("text") or "")
        return "".join(out)


class FaultProxy:
    """`fault` (set by a test, applies to the next requests until changed):
      None                  forward faithfully
      ("cut", n)            close the connection after n events, mid-stream
      ("reset", n)          reset it (TCP RST) after n events
      ("corrupt", n)        send a broken JSON event as event n
      ("stall", n)          after n events, send nothing more and keep the connection open
      ("endless", n)        after n events, send SSE comments forever (a stream that never ends)
      ("status", code, k)   answer the next k requests with HTTP `code` (429 carries Retry-After: 1)
      ("strip", keys)       forward without these body keys (an upstream that ignores a push-down)
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.fault: tuple | None = None
        self.requests: list[Forwarded] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *_):
                pass

            def do_GET(self):
                r = httpx.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=10)
                self._reply(r.status_code, r.content)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                proxy.serve(self, body)

            def _reply(self, status: int, data: bytes, headers: dict | None = None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def serve(self, h, body: dict) -> None:
        fault = self.fault
        rec = Forwarded(h.path, body)
        with self._lock:
            self.requests.append(rec)
            if fault and fault[0] == "status" and fault[2] > 0:
                self.fault = ("status", fault[1], fault[2] - 1) if fault[2] > 1 else None
        if fault and fault[0] == "status":
            extra = {"Retry-After": "1"} if fault[1] == 429 else {}
            h._reply(fault[1], json.dumps({"error": {"message": f"injected HTTP {fault[1]}"}}).encode(), extra)
            return
        sent = dict(body)
        if fault and fault[0] == "strip":
            for k in fault[1]:
                sent.pop(k, None)
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        with httpx.stream("POST", self.upstream + h.path.removeprefix("/v1"), json=sent, timeout=120) as r:
            try:
                self._relay(h, r, rec, fault)
            finally:
                rec.closed = time.monotonic()

    def _relay(self, h, r, rec: Forwarded, fault: tuple | None) -> None:
        for data in _events(r.iter_lines()):
            n = len(rec.events)
            if _closed(h.connection):
                rec.client_closed = True
                return
            if fault and fault[0] == "reset" and n == fault[1]:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                return
            if fault and fault[0] in ("cut", "stall", "endless") and n == fault[1]:
                if fault[0] == "stall":
                    while not _closed(h.connection):
                        time.sleep(0.05)
                    rec.client_closed = True
                elif fault[0] == "endless":
                    with contextlib.suppress(OSError):
                        while True:
                            h.wfile.write(b": keepalive\n\n")
                            h.wfile.flush()
                            time.sleep(0.05)
                    rec.client_closed = True
                return  # cut: the connection closes mid-stream
            if fault and fault[0] == "corrupt" and n == fault[1]:
                data = '{"choices": [{"delta": {"content": "x"'
            try:
                h.wfile.write(f"data: {data}\n\n".encode())
                h.wfile.flush()
            except OSError:
                rec.client_closed = True
                return
            rec.events.append(data)
            rec.times.append(time.monotonic())


def _events(lines):
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield "\n".join(data)


def _closed(sock: socket.socket) -> bool:
    """Has the peer closed its side? (Readable with nothing to read: its FIN arrived.)"""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        return bool(r) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# ---- the scripted upstream (a test double: see the module docstring) ---------------------------------
class ScriptedUpstream:
    """Answers request k with `texts[min(k, len-1)]`, as chat chunks split into the deltas of
    `splits[k]` (a list of delta strings) and written in the byte pieces of `writes(k, body)`."""

    def __init__(self):
        self.texts: list[str] = []
        self.deltas: list[list[str]] = []
        self.cuts: list[list[int]] = []  # byte offsets at which the SSE body is written in pieces
        self.bodies: list[dict] = []
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *_):
                pass

            def do_POST(self):
                up.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                k = min(len(up.bodies) - 1, len(up.deltas) - 1)
                chunks = [{"choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]}
                          for d in up.deltas[k]]
                chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                prev = 0
                with contextlib.suppress(OSError):
                    for c in [*sorted(set(x for x in up.cuts[k] if 0 < x < len(raw))), len(raw)]:
                        self.wfile.write(raw[prev:c])
                        self.wfile.flush()
                        prev = c

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def script(self, deltas: list[list[str]], cuts: list[list[int]]) -> None:
        self.deltas, self.cuts, self.bodies = deltas, cuts, []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the capture upstream (a test double for its answer: see the module docstring) ------------------
class CaptureUpstream:
    """Records every body; answers with the last message's text (or the prompt) as a chat stream,
    cut into events at `self.cuts` (character offsets), or as one JSON body when not streamed."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.cuts: list[int] = []
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *_):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                up.bodies.append(body)
                msgs = body.get("messages") or [{"content": body.get("prompt", "")}]
                text = str(msgs[-1].get("content") or "")
                b = [0, *sorted(c for c in set(up.cuts) if 0 < c < len(text)), len(text)]
                chunks = [{"choices": [{"index": 0, "delta": {"content": text[b[i]:b[i + 1]]}, "finish_reason": None}]}
                          for i in range(len(b) - 1)]
                chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                raw = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
