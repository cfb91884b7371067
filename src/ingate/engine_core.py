"""The engine core in a process of its own, as vLLM runs its engine core apart from its API
server: a native crash in llama.cpp (SIGSEGV, SIGILL, an abort) costs the requests in flight, not
the server.

The child holds a `Runtime` and runs up to `parallel` generations at once through its batched loop
(ingate.batch), each through `ingate.core.govern`. It audits every decision itself, durably,
before it sends the text the decision concerns, then streams the released text to the server one
way, so no round trip sits between two tokens. Every message on the socket names its request.

The parent (`EngineCore`, a `Core`) has one reader thread that hands each message to the request
it names. When the child dies, every request in flight gets the crash: the parent writes what the
child could not (each request's audit row, finish_reason `error`, and an `engine` error
decision) and each client is told. The next request starts a new child.

    python -m ingate.engine_core FD      the child; its configuration arrives pickled on the socket FD
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from ingate.core import LOGPROBS, Request
from ingate.drivers.base import DecisionSink, GenerationFailed, Result, TextSink, partial_result
from ingate.engines.base import ContextFull, EngineCrashed, EngineError, exit_reason
from ingate.gate.decision import Action, Decision
from ingate.policy import Policy
from ingate.store.audit import open_audit

START_TIMEOUT_S = 300.0
INFO_TIMEOUT_S = 2.0


# ---- the child ------------------------------------------------------------------------------------
class _Sender:
    """The child's end of the socket, shared by the request threads (one message at a time)."""

    def __init__(self, conn: Connection):
        self.conn, self.lock = conn, threading.Lock()

    def __call__(self, msg: tuple) -> None:
        with self.lock:
            self.conn.send(msg)


def _serve(conn: Connection) -> None:
    """Load the runtime the parent describes, then run its requests until closed or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    from ingate.runtime import Runtime

    cfg = conn.recv()
    try:
        rt = Runtime.load(cfg["model"], cfg["audit"], use_audit=cfg["use_audit"], layout=cfg["layout"],
                          audit_key_file=cfg["audit_key_file"], parallel=cfg["parallel"],
                          prefix_cache_bytes=cfg["prefix_cache_bytes"], step_tokens=cfg["step_tokens"])
        rt.engine.layout_reason = cfg["layout_reason"]  # type: ignore[attr-defined]  # the local engine's
        for p in cfg["policies"]:
            rt.warm(p)  # compile and warm now: no request pays for it
    except Exception as e:
        conn.send(("error", type(e).__name__, str(e)))
        return
    send = _Sender(conn)
    send(("ready", {"pid": os.getpid(), "name": rt.engine.name, "info": rt.info()}))
    cancels: dict[str, threading.Event] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone: nobody to serve
            return
        if msg[0] == "run":
            req = msg[1]
            cancels[req.request_id] = stop = threading.Event()
            threading.Thread(target=_run_one, args=(send, rt, req, stop, cancels), daemon=True,
                             name=f"ingate-request-{req.request_id[:8]}").start()
        elif msg[0] == "cancel":
            if (ev := cancels.get(msg[1])) is not None:
                ev.set()
        elif msg[0] == "info":
            send(("info", rt.info()))
        elif msg[0] == "close":
            for ev in list(cancels.values()):
                ev.set()
            rt.close()
            return


def _run_one(send: _Sender, rt, req: Request, stop: threading.Event, cancels: dict) -> None:
    from ingate.runtime import LocalCore

    rid = req.request_id
    try:
        res = LocalCore(rt).run(req, on_text=lambda t: send(("text", rid, t)), cancelled=stop.is_set,
                                on_audited=lambda ds: send(("audited", rid, ds)))
        send(("done", rid, res))
    except GenerationFailed as e:
        send(("failed", rid, e.result, type(e.cause).__name__, str(e.cause)))
    except Exception as e:  # reported to that request; the core serves the others
        send(("error", rid, type(e).__name__, f"{type(e).__name__}: {e}"))
    finally:
        cancels.pop(rid, None)


# ---- the parent -----------------------------------------------------------------------------------
class _Flight:
    """One request in flight in the child: its messages, and what it has released so far."""

    def __init__(self) -> None:
        self.inbox: queue.Queue = queue.Queue()
        self.text: list[str] = []
        self.audited: list[Decision] = []
        self.ttft: float | None = None


class EngineCore:
    """The engine core in a child process (a `Core`): up to `parallel` generations at once."""

    capabilities = frozenset({LOGPROBS})

    def __init__(self, model: str | Path | None, audit: str | Path | None, policies: Sequence[Policy],
                 use_audit: bool = True, audit_key_file: str | Path | None = None, parallel: int = 1,
                 prefix_cache_bytes: int | None = None, step_tokens: int | None = None):
        from ingate.batch import STEP_TOKENS
        from ingate.engines import layout
        from ingate.engines.llamacpp import resolve_model_path
        from ingate.engines.threads import thread_setting

        thread_setting()  # a bad INGATE_THREADS is reported here, not by a dying child
        self.model = str(resolve_model_path(model))
        # writes what a dead core could not; opened (and its key made) before the core opens it too
        self.audit = open_audit(audit, audit_key_file) if use_audit else None
        self._key_file = str(audit_key_file) if audit_key_file is not None else None
        self.policies = list(policies)
        self.max_concurrency = max(1, parallel)  # 0: one at a time, without the batched loop
        self._batch = {"parallel": parallel, "prefix_cache_bytes": prefix_cache_bytes,
                       "step_tokens": step_tokens or STEP_TOKENS}
        choice = layout.choose(Path(self.model))  # probed in a child of its own, cached
        self.layout, self.layout_reason = choice.layout, choice.reason
        self.restarts = 0
        self.last_crash: str | None = None
        self._lock = threading.Lock()  # (re)starting and stopping the child
        self._send_lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._infos: queue.Queue = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._spawn()

    # ---- the child's life -----------------------------------------------------------------------------
    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        src = str(Path(__file__).resolve().parents[1])  # where `ingate` is imported from, for the child too
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-m", "ingate.engine_core", str(theirs.fileno())],
                                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                env=env)
        theirs.close()  # only the child holds its end now: its death closes the socket
        conn = Connection(ours.detach())
        try:
            conn.send({"model": self.model, "audit": str(self.audit.path) if self.audit else None,
                       "use_audit": self.audit is not None, "audit_key_file": self._key_file, "layout": self.layout,
                       "layout_reason": self.layout_reason, "policies": self.policies} | self._batch)
            deadline = time.monotonic() + START_TIMEOUT_S
            while not conn.poll(0.05):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EOFError
            msg = conn.recv()
        except (EOFError, OSError):
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            conn.close()
            raise EngineError(f"the engine process {exit_reason(proc.returncode)} while loading the model "
                              f"{self.model!r} (weight layout {self.layout}); {_advice(self.layout)}") from None
        if msg[0] == "error":
            proc.wait(5)
            conn.close()
            raise EngineError(msg[2])
        self._proc, self._conn = proc, conn
        self.pid: int = msg[1]["pid"]
        self.name: str = msg[1]["name"]
        self._info: dict = msg[1]["info"]
        threading.Thread(target=self._read, args=(conn, proc), daemon=True, name="ingate-engine-reader").start()

    def _read(self, conn: Connection, proc: subprocess.Popen) -> None:
        """Hand each of the child's messages to the request it names, until the child dies or closes."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "info":
                self._infos.put(msg[1])
                continue
            flight = self._flights.get(msg[1])
            if flight is not None:
                flight.inbox.put(msg)
        proc.wait()  # the socket closed: the child is gone (or going)
        for flight in list(self._flights.values()):
            flight.inbox.put(("dead",))

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure_alive(self) -> bool:
        """Start a new engine process if this one died; True when it did."""
        with self._lock:
            if self.alive:
                return False
            self._reap()
            self._spawn()
            self.restarts += 1
            return True

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(5)

    def _send(self, msg: tuple) -> None:
        conn = self._conn
        if conn is None:
            raise EOFError("the engine process is not running")
        with self._send_lock:
            conn.send(msg)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self.alive:
                try:
                    self._send(("close",))
                    if self._proc is not None:
                        self._proc.wait(10)
                except (EOFError, OSError, subprocess.TimeoutExpired):
                    pass
            self._reap()
            if self.audit is not None:
                self.audit.close()

    def info(self) -> dict:
        """The engine's report (threads as tuned so far, the batched loop's figures); the one from
        its last answer when the child does not answer at once."""
        if self.alive:
            try:
                self._send(("info",))
                self._info = self._infos.get(timeout=INFO_TIMEOUT_S)
            except (EOFError, OSError, queue.Empty):
                pass
        return self._info | {"layout_reason": self.layout_reason,
                             "process": {"pid": self.pid, "alive": self.alive, "restarts": self.restarts,
                                         "last_crash": self.last_crash}}

    # ---- one generation -----------------------------------------------------------------------------
    def run(self, req: Request, on_text: TextSink | None = None, cancelled: Callable[[], bool] | None = None,
            on_audited: DecisionSink | None = None) -> Result:
        """One generation in the core; the released text goes to `on_text` as it comes."""
        t0 = time.perf_counter()
        flight = _Flight()
        rid = req.request_id
        self._flights[rid] = flight
        try:
            if not self.alive:  # it died with other requests in flight: this one gets a new process
                try:
                    self.ensure_alive()
                except EngineError:
                    raise self._failed(req, flight, t0, "starting a generation", dead=True) from None
            try:
                self._send(("run", req))
            except (EOFError, OSError):
                raise self._failed(req, flight, t0, "starting a generation") from None
            return self._follow(req, flight, t0, on_text, cancelled, on_audited)
        finally:
            self._flights.pop(rid, None)

    def _follow(self, req: Request, flight: _Flight, t0: float, on_text: TextSink | None,
                cancelled: Callable[[], bool] | None, on_audited: DecisionSink | None) -> Result:
        sent_cancel = False
        while True:
            if cancelled is not None and not sent_cancel and cancelled():
                try:
                    self._send(("cancel", req.request_id))  # the child stops it within one token
                except (EOFError, OSError):
                    pass
                sent_cancel = True
            try:
                msg = flight.inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            kind = msg[0]
            if kind == "dead":
                raise self._failed(req, flight, t0, "generating")
            if kind == "done":
                return msg[2]
            if kind == "failed":
                raise GenerationFailed(msg[2], _error(msg[3], msg[4]))
            if kind == "error":
                raise _error(msg[2], msg[3])
            try:
                if kind == "text":
                    flight.text.append(msg[2])
                    flight.ttft = flight.ttft or time.perf_counter() - t0
                    if on_text is not None:
                        on_text(msg[2])
                elif kind == "audited":
                    flight.audited.extend(msg[2])
                    if on_audited is not None:
                        on_audited(msg[2])
            except BaseException:  # the caller's callback failed (a closed pipe, Ctrl-C): stop the work
                try:
                    self._send(("cancel", req.request_id))
                except (EOFError, OSError):
                    pass
                raise

    def _failed(self, req: Request, flight: _Flight, t0: float, what: str, dead: bool = False) -> GenerationFailed:
        """The child died during `req`: audit what it could not, and say what happened."""
        proc = self._proc
        if proc is not None:
            proc.wait(5)
        if not dead and proc is not None:
            self.last_crash = (f"the engine process (pid {self.pid}) {exit_reason(proc.returncode)} while "
                               f"{what} (weight layout {self.layout})")
        err = EngineCrashed(f"{self.last_crash or 'the engine process is not running'}: a native crash in "
                            f"llama.cpp; the server starts a new engine process; {_advice(self.layout)}")
        released = len(flight.text)  # text events: at least one token each
        d = Decision("engine", Action.ERROR, released, 0, b"", f"EngineCrashed: {err}")
        res = partial_result(None, 0, time.perf_counter() - t0, flight.ttft, "".join(flight.text), released)
        res.decisions = flight.audited + [d]
        if self.audit is not None:
            self.audit.record(req.request_id, req.policy.name, [d])
            self.audit.record_request(req.request_id, req.policy.name, res, req.session, req.key_id)
        return GenerationFailed(res, err)


def _error(kind: str, message: str) -> Exception:
    return {"ContextFull": ContextFull, "EngineCrashed": EngineCrashed, "EngineError": EngineError}.get(
        kind, RuntimeError)(message)


def _advice(layout: str) -> str:
    if layout == "off":
        return "if it repeats, run `ingate doctor` and report what it prints"
    return (f"if it repeats, set INGATE_LLAMA_REPACK=off (now {layout}: llama.cpp's repacked/AMX weight "
            "layouts) and run `ingate doctor`")


def main(argv: list[str]) -> int:
    _serve(Connection(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

