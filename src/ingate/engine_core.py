"""The engine core in a process of its own, as vLLM runs its engine core apart from its API
server: a native crash in llama.cpp (SIGSEGV, SIGILL, an abort) costs the requests in flight, not
the server.

The child runs whole generations through `ingate.core.govern` over its `Runtime`. It audits every
decision itself, durably, before it sends the text the decision concerns, then streams the
released text to the server one way, so no round trip sits between two tokens. The parent
(`EngineCore`, a `Core`) forwards the text, and when the child dies it writes what the child could
not: the request's audit row (finish_reason `error`) and an `engine` error decision. Then it
starts a new child.

    python -m ingate.engine_core FD      the child; its configuration arrives pickled on the socket FD
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ingate.core import LOGPROBS, Request
from ingate.drivers.base import DecisionSink, GenerationFailed, Result, TextSink, partial_result
from ingate.engines.base import ContextFull, EngineCrashed, EngineError, exit_reason
from ingate.gate.decision import Action, Decision
from ingate.policy import Policy
from ingate.store.audit import open_audit

START_TIMEOUT_S = 300.0


# ---- the child ------------------------------------------------------------------------------------
def _serve(conn: Connection) -> None:
    """Load the runtime the parent describes, then run its requests until closed or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    from ingate.runtime import Runtime

    cfg = conn.recv()
    try:
        rt = Runtime.load(cfg["model"], cfg["audit"], use_audit=cfg["use_audit"], layout=cfg["layout"],
                          audit_key_file=cfg["audit_key_file"])
        rt.engine.layout_reason = cfg["layout_reason"]  # type: ignore[attr-defined]  # the local engine's
        for p in cfg["policies"]:
            rt.warm(p)  # compile and warm now: no request pays for it
    except Exception as e:
        conn.send(("error", type(e).__name__, str(e)))
        return
    conn.send(("ready", {"pid": os.getpid(), "name": rt.engine.name, "info": rt.engine.info()}))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone: nobody to serve
            return
        if msg[0] == "run":
            _run_one(conn, rt, msg[1])
        elif msg[0] == "info":
            conn.send(("info", rt.engine.info()))
        elif msg[0] == "close":
            rt.close()
            return


def _run_one(conn: Connection, rt, req: Request) -> None:
    from ingate.runtime import LocalCore

    stop_asked: list[bool] = []

    def cancelled() -> bool:  # polled once per token: a cancel from the parent waits on the socket
        if not stop_asked and conn.poll(0):
            stop_asked.append(conn.recv())
        return bool(stop_asked)

    engine = rt.engine
    try:
        res = LocalCore(rt).run(req, on_text=lambda t: conn.send(("text", t, engine.n_generated)),
                                cancelled=cancelled, on_audited=lambda ds: conn.send(("audited", ds)))
        conn.send(("done", res))
    except GenerationFailed as e:
        conn.send(("failed", e.result, type(e.cause).__name__, str(e.cause)))
    except Exception as e:  # reported to that request; the core serves the next one
        conn.send(("error", type(e).__name__, f"{type(e).__name__}: {e}"))


# ---- the parent -----------------------------------------------------------------------------------
class EngineCore:
    """The engine core in a child process (a `Core`). One request at a time."""

    capabilities = frozenset({LOGPROBS})
    max_concurrency = 1

    def __init__(self, model: str | Path | None, audit: str | Path | None, policies: Sequence[Policy],
                 use_audit: bool = True, audit_key_file: str | Path | None = None):
        from ingate.engines import layout
        from ingate.engines.llamacpp import resolve_model_path
        from ingate.engines.threads import thread_setting

        thread_setting()  # a bad INGATE_THREADS is reported here, not by a dying child
        self.model = str(resolve_model_path(model))
        # writes what a dead core could not; opened (and its key made) before the core opens it too
        self.audit = open_audit(audit, audit_key_file) if use_audit else None
        self._key_file = str(audit_key_file) if audit_key_file is not None else None
        self.policies = list(policies)
        choice = layout.choose(Path(self.model))  # probed in a child of its own, cached
        self.layout, self.layout_reason = choice.layout, choice.reason
        self.restarts = 0
        self.last_crash: str | None = None
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._spawn()

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
                       "layout_reason": self.layout_reason, "policies": self.policies})
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

    @property
    def _pipe(self) -> Connection:
        """The socket to the core; none is as good as a dead core (callers catch EOFError)."""
        if self._conn is None:
            raise EOFError("the engine process is not running")
        return self._conn

    @property
    def _child(self) -> subprocess.Popen:
        if self._proc is None:
            raise EOFError("the engine process is not running")
        return self._proc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self.alive:
                try:
                    self._pipe.send(("close",))
                    self._child.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            self._reap()
            if self.audit is not None:
                self.audit.close()

    def info(self) -> dict:
        """The engine's report (threads as tuned so far); the one from its last answer when busy or dead."""
        if self.alive and self._busy.acquire(blocking=False):
            try:
                self._pipe.send(("info",))
                self._info = self._pipe.recv()[1]
            except (EOFError, OSError):
                pass
            finally:
                self._busy.release()
        return self._info | {"layout_reason": self.layout_reason,
                             "process": {"pid": self.pid, "alive": self.alive, "restarts": self.restarts,
                                         "last_crash": self.last_crash}}

    def run(self, req: Request, on_text: TextSink | None = None, cancelled: Callable[[], bool] | None = None,
            on_audited: DecisionSink | None = None) -> Result:
        """One generation in the core; the released text goes to `on_text` as it comes."""
        t0 = time.perf_counter()
        text: list[str] = []
        audited: list[Decision] = []
        seen: dict[str, Any] = {"tokens": 0, "ttft": None}
        with self._busy:
            if not self.alive:
                raise self._failed(req, text, audited, seen, t0, "starting a generation", dead=True)
            sent_cancel = False
            try:
                self._pipe.send(("run", req))
            except (EOFError, OSError):
                raise self._failed(req, text, audited, seen, t0, "starting a generation") from None
            while True:
                try:  # only the socket's errors mean the core died; the callbacks' are the caller's
                    if cancelled is not None and not sent_cancel and cancelled():
                        self._pipe.send(("cancel",))  # the core stops within one token
                        sent_cancel = True
                    if not self._pipe.poll(0.05):
                        if self._child.poll() is not None:
                            raise EOFError
                        continue
                    msg = self._pipe.recv()
                except (EOFError, OSError):
                    raise self._failed(req, text, audited, seen, t0, "generating") from None
                kind = msg[0]
                if kind == "done":
                    return msg[1]
                if kind == "failed":
                    raise GenerationFailed(msg[1], _error(msg[2], msg[3]))
                if kind == "error":
                    raise _error(msg[1], msg[2])
                try:
                    if kind == "text":
                        text.append(msg[1])
                        seen["tokens"] = msg[2]
                        seen["ttft"] = seen["ttft"] or time.perf_counter() - t0
                        if on_text is not None:
                            on_text(msg[1])
                    elif kind == "audited":
                        audited.extend(msg[1])
                        if on_audited is not None:
                            on_audited(msg[1])
                except BaseException:  # the caller's callback failed (a closed pipe, Ctrl-C): stop the work
                    self._abandon()
                    raise

    def _abandon(self) -> None:
        """Cancel the generation in flight and read what is left of it, so the next request starts
        clean; a core that does not finish within 10 s is killed (and restarted on demand)."""
        try:
            self._pipe.send(("cancel",))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self._pipe.poll(0.1) and self._pipe.recv()[0] in ("done", "failed", "error"):
                    return
        except (EOFError, OSError):
            pass
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def _failed(self, req: Request, text: list[str], audited: list[Decision], seen: dict, t0: float,
                what: str, dead: bool = False) -> GenerationFailed:
        """The core died during `req`: audit what it could not, and say what happened."""
        if self._proc is not None:
            self._child.wait(5)
        if not dead:
            self.last_crash = (f"the engine process (pid {self.pid}) {exit_reason(self._child.returncode)} while "
                               f"{what} (weight layout {self.layout})")
        err = EngineCrashed(f"{self.last_crash or 'the engine process is not running'}: a native crash in "
                            f"llama.cpp; the server starts a new engine process; {_advice(self.layout)}")
        d = Decision("engine", Action.ERROR, seen["tokens"], 0, b"", f"EngineCrashed: {err}")
        res = partial_result(None, 0, time.perf_counter() - t0, seen["ttft"], "".join(text), seen["tokens"])
        res.decisions = audited + [d]
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
