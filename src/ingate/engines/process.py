"""The engine in its own process, as vLLM runs its engine core: a native crash costs the requests
in flight, not the server.

`EngineProcess` is an `Engine` whose model lives in a child process (`python -m
ingate.engines.process`, talking over a socket pair: a fresh interpreter that never re-imports
the caller's `__main__`, as multiprocessing's spawn would).
One round trip per token: `step()` sends the tokens accepted and rolled back since the last step,
the child decodes and writes the logits into a shared-memory page, and the parent samples from a
view of that page; the gate never leaves the parent. When the child dies (SIGSEGV or SIGILL in
llama.cpp, the OOM killer), the call in flight raises `EngineCrashed` naming the signal and the
setting to try, and `restart()` starts a fresh child.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from ingate.engines.base import ContextFull, EngineCrashed, EngineError

START_TIMEOUT_S = 300.0


def _child(conn: Connection, model: str, n_ctx: int, n_threads: int | None, layout: str) -> None:
    """The engine process: load the model, then serve requests until told to close or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    from ingate.engines.llamacpp import LlamaCppEngine

    try:
        engine = LlamaCppEngine(model, n_ctx=n_ctx, n_threads=n_threads, layout=layout)
    except EngineError as e:
        conn.send(("error", type(e).__name__, str(e)))
        return
    fd, shm = tempfile.mkstemp(prefix="ingate-logits-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.ftruncate(fd, engine.vocab_size * 4)
    page = mmap.mmap(fd, engine.vocab_size * 4)
    os.close(fd)
    logits = np.frombuffer(page, dtype=np.float32, count=engine.vocab_size)
    conn.send(("ready", {"pid": os.getpid(), "name": engine.name, "vocab_size": engine.vocab_size,
                         "n_ctx": engine.n_ctx, "token_bytes": engine.token_bytes(), "eog": sorted(engine.eog_tokens()),
                         "shm": shm, "info": engine.info()}))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone: nobody to serve
            return
        op = msg[0]
        try:
            if op == "step":
                for kind, v in msg[1]:
                    if kind == "a":
                        engine.accept(v)
                    else:
                        engine.rollback(v)
                logits[:] = engine.step()
                conn.send(("ok", None))
            elif op == "start":
                engine.start(msg[1])
                conn.send(("ok", None))
            elif op == "tokenize":
                conn.send(("ok", engine.tokenize(msg[1], special=msg[2], add_bos=msg[3])))
            elif op == "chat_prompt":
                conn.send(("ok", engine.chat_prompt(msg[1])))
            elif op == "info":
                conn.send(("ok", engine.info()))
            elif op == "close":
                engine.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", "EngineError", f"unknown engine operation {op!r}"))
        except Exception as e:  # reported to the caller; the engine process stays up
            conn.send(("error", type(e).__name__, str(e)))


class EngineProcess:
    """An `Engine` whose llama.cpp runs in a child process. One caller at a time (like the engine)."""

    def __init__(self, model: str | Path, *, layout: str, n_ctx: int = 4096, n_threads: int | None = None,
                 layout_reason: str = ""):
        self.model_path = str(model)
        self.layout, self.layout_reason = layout, layout_reason
        self._n_ctx_req, self._threads = n_ctx, n_threads
        self.restarts = 0
        self.last_crash: str | None = None
        self._lock = threading.Lock()  # restart() may come from another thread than the worker
        self._busy = threading.Lock()  # one message on the pipe at a time (info() may come from /healthz)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._ops: list[tuple[str, int]] = []
        self._spawn()

    # ---- the child's lifecycle ----------------------------------------------------------------
    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        config = {"model": self.model_path, "n_ctx": self._n_ctx_req, "threads": self._threads, "layout": self.layout}
        src = str(Path(__file__).resolve().parents[2])  # where `ingate` is imported from, for the child too
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.Popen([sys.executable, "-m", "ingate.engines.process", str(theirs.fileno()),
                                 json.dumps(config)], pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, env=env)
        theirs.close()  # only the child holds its end: its death closes the socket
        parent = Connection(ours.detach())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not parent.poll(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
                parent.close()
                raise EngineError(f"the engine process {_death(proc.returncode)} while loading the model "
                                  f"{self.model_path!r} (weight layout {self.layout}); {_advice(self.layout)}")
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            proc.wait(5)
            parent.close()
            raise EngineError(f"the engine process {_death(proc.returncode)} while loading the model; "
                              f"{_advice(self.layout)}") from None
        if msg[0] == "error":
            proc.wait(5)
            parent.close()
            raise (ContextFull if msg[1] == "ContextFull" else EngineError)(msg[2])
        meta = msg[1]
        fd = os.open(meta["shm"], os.O_RDONLY)
        try:
            page = mmap.mmap(fd, meta["vocab_size"] * 4, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
            os.unlink(meta["shm"])  # both sides have it mapped; nothing left behind in /dev/shm
        self._proc, self._conn, self._page = proc, parent, page
        self._logits = np.frombuffer(page, dtype=np.float32, count=meta["vocab_size"])
        self.pid: int = meta["pid"]
        self.name: str = meta["name"]
        self.vocab_size: int = meta["vocab_size"]
        self.n_ctx: int = meta["n_ctx"]
        self._token_bytes: list[bytes] = meta["token_bytes"]
        self._eog = frozenset(meta["eog"])
        self._info = meta["info"]
        self._ops = []

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def restart(self) -> None:
        """Start a fresh engine process (after a crash); the old one is reaped."""
        with self._lock:
            self._reap()
            self._spawn()
            self.restarts += 1

    def ensure_alive(self) -> bool:
        """Restart the engine if its process died; True when it did."""
        if self.alive:
            return False
        self.restart()
        return True

    def _reap(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self.alive:
                try:
                    self._conn.send(("close",))
                    self._conn.poll(5)
                except (OSError, EOFError):
                    pass
            self._reap()

    # ---- one round trip -------------------------------------------------------------------------
    def _call(self, *msg, what: str):
        if self._conn is None or not self.alive:
            raise EngineCrashed(f"the engine process is not running (last crash: {self.last_crash or 'none'}); "
                                "it is restarted before the next request")
        try:
            with self._busy:
                self._conn.send(msg)
                reply = self._conn.recv()
        except (EOFError, OSError):
            self._proc.wait(5)
            self.last_crash = (f"the engine process (pid {self.pid}) {_death(self._proc.returncode)} while {what} "
                               f"(weight layout {self.layout})")
            raise EngineCrashed(f"{self.last_crash}: a native crash in llama.cpp. The server starts a new "
                                f"engine process; {_advice(self.layout)}") from None
        if reply[0] == "ok":
            return reply[1]
        raise (ContextFull if reply[1] == "ContextFull" else EngineError)(reply[2])

    # ---- Engine ---------------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes]:
        return self._token_bytes

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        return self._call("tokenize", text, special, add_bos, what="tokenizing")

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self._call("chat_prompt", messages, what="rendering the chat template")

    def start(self, prompt: list[int]) -> None:
        self._ops = []
        self._call("start", list(prompt), what="starting a generation")

    def step(self) -> np.ndarray:
        ops, self._ops = self._ops, []
        self._call("step", ops, what="decoding")
        return self._logits

    def accept(self, token: int) -> None:
        self._ops.append(("a", int(token)))

    def rollback(self, n: int) -> None:
        while n > 0 and self._ops and self._ops[-1][0] == "a":  # not yet sent: just forget it
            self._ops.pop()
            n -= 1
        if n > 0:
            self._ops.append(("r", n))

    def info(self) -> dict:
        """The engine's own report; the one from its start when it is busy decoding or dead."""
        live = self._info
        if self.alive and self._busy.acquire(blocking=False):
            self._busy.release()
            try:
                live = self._info = self._call("info", what="reporting")
            except EngineError:
                pass
        return live | {"process": {"pid": self.pid, "alive": self.alive, "restarts": self.restarts,
                                   "last_crash": self.last_crash},
                       "layout_reason": self.layout_reason}


def main(argv: list[str]) -> int:
    """The child's entry point: `python -m ingate.engines.process FD CONFIG_JSON`."""
    fd, config = int(argv[0]), json.loads(argv[1])
    _child(Connection(fd), config["model"], config["n_ctx"], config["threads"], config["layout"])
    return 0


def _death(exitcode: int | None) -> str:
    if exitcode is None:
        return "stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"died from {name}"
    return f"exited with status {exitcode}"


def _advice(layout: str) -> str:
    if layout == "off":
        return "if it repeats, run `ingate doctor` and report what it prints"
    return (f"if it repeats, set INGATE_LLAMA_REPACK=off (now {layout}: llama.cpp's repacked/AMX weight "
            "layouts) and run `ingate doctor`")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
