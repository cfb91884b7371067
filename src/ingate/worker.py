"""One model's generations, fed by a bounded queue.

llama.cpp contexts are not thread-safe, and on a small CPU box concurrent decodes only slow
each other down; so the server hands every request for a local model to a single worker thread,
which hands it to the engine core (its own process by default). An upstream model is served by
as many threads as it may have requests in flight (`threads`): each waits on its own stream.
Each job streams its released text back to its request's event loop, and can be cancelled between
two tokens. When the core dies, the job in flight ends with the crash, and the worker starts a new
core before the next job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ingate.core import Core, Request
from ingate.drivers.base import GenerationFailed, GenerationParams, Result
from ingate.engines import EngineCrashed
from ingate.gate.decision import Action, Decision
from ingate.keys import Grant
from ingate.masking import Vault
from ingate.metrics import Metrics
from ingate.policy import Policy
from ingate.store.sessions import SessionState, SessionStore, StoreError, violations_in
from ingate.store.vaults import VaultStore
from ingate.structure.spec import Structure

log = logging.getLogger("ingate.worker")
END_RETRIES_S = (0.1, 0.3, 1.0, 3.0)  # waits after each failed `end`: about 4.4 s in all


class QueueFull(Exception):
    """Every slot is taken: the caller should answer 429 with Retry-After."""


class Draining(Exception):
    """The replica is shutting down: the caller should retry on another (503 with Retry-After)."""


class WaitedTooLong(Exception):
    """The request waited in the queue past its deadline: the caller should retry (429 with Retry-After)."""


@dataclass(eq=False)
class Job:
    messages: list[dict[str, str]] | str
    policy: Policy
    params: GenerationParams
    stop: Sequence[str]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    session: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancel: threading.Event = field(default_factory=threading.Event)
    session_entropy: float = 0.0  # what the session had spent when the request began
    reserved: bool = False  # the session store holds a place for it: `end` must free it, once
    session_state: SessionState | None = None  # the session after this request (for the report)
    structure: Structure | None = None  # response_format or a tool call (ingate.structure)
    queued_at: float = field(default_factory=time.monotonic)
    grant: Grant = field(default_factory=Grant)  # the caller's key: its id for the audit, its tenant's sessions
    live_decisions: bool = False  # also put ("audited", decisions) events, each once durable (the console)

    @property
    def session_key(self) -> str:
        """The session as the store names it: the client's id within its tenant (ingate.keys)."""
        assert self.session is not None
        return self.grant.session_key(self.session)

    def _put(self, item: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone (server shutting down): nobody to tell
            self.cancel.set()


CLOSE_WAIT_S = 5.0  # Worker.close: the longest wait for room in the queue for the threads' stop marks


class Worker:
    def __init__(self, core: Core, max_queue: int = 16, metrics: Metrics | None = None,
                 sessions: SessionStore | None = None, threads: int = 1, max_wait_s: float | None = None,
                 vaults: VaultStore | None = None):
        """`max_wait_s`: a request that waited longer than this for a place is turned away (429).
        `vaults`: where session vaults live (mask_upstream with vault: session)."""
        self.core: Core = core
        self.vaults = vaults
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.sessions = sessions
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._threads = [threading.Thread(target=self._run, name=f"ingate-worker-{i}", daemon=True)
                         for i in range(threads)]
        self.running: set[Job] = set()  # set.add/discard are atomic under the GIL
        self.restart_error: str | None = None  # the last failed engine restart, for /healthz
        # told of each generation that ended (the console keeps a sample of recent traffic): must be quick
        self.observers: list[Callable[[Job, Result], None]] = []
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return self._jobs.qsize() + len(self.running)

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None

    def drain(self, timeout: float) -> bool:
        """Shutting down: cancel every queued and running job (each ends within a token, audited as
        cancelled), then wait up to `timeout` seconds for the threads. True when they stopped."""
        with contextlib.suppress(queue.Empty):
            while True:
                job = self._jobs.get_nowait()
                if job is not None:
                    job.cancel.set()
                    self.end_session(job, [], 0.0)
                    job._put(("error", Draining("this replica is shutting down; retry on another")))
        for job in list(self.running):
            job.cancel.set()
        if timeout <= 0:
            return not self.running
        self.close()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def close(self) -> None:
        """Stop the worker threads once the jobs queued before this are done. There may be more
        threads than the queue holds (an upstream's max_concurrency above --max-queue): idle
        threads take their stop marks as they go in, so each put waits a little for room."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        for _ in self._threads:
            try:
                self._jobs.put(None, timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[arg-type]
            except queue.Full:  # busy threads and a full queue at shutdown: the daemon threads die with us
                return

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancel.is_set():  # the client left while it waited
                self.end_session(job, [], 0.0)
                continue
            waited = time.monotonic() - job.queued_at
            if self.max_wait_s is not None and waited > self.max_wait_s:  # the deadline passed in the queue
                self.end_session(job, [], 0.0)
                job._put(("error", WaitedTooLong(f"the request waited {waited:.0f} s for a place, over this "
                                                 f"server's --max-queue-wait of {self.max_wait_s:g} s; retry shortly")))
                continue
            self.running.add(job)
            try:
                vault = self._vault(job)
                req = Request(job.messages, job.policy, job.params, job.stop, job.request_id, job.session,
                              job.session_entropy, job.structure, job.grant.key_id, vault=vault)
                res: Result = self.core.run(req, on_text=functools.partial(_text, job), cancelled=job.cancel.is_set,
                                            on_audited=functools.partial(_audited, job) if job.live_decisions
                                            else None)
                self._keep_vault(job, res.vault if res.vault is not None else vault)
                self._account(job, res)  # before the client hears "done"
                job._put(("done", res))
            except GenerationFailed as e:  # the engine failed: what was decided still counts
                self._account(job, e.result)
                job._put(("error", e.cause))
                if isinstance(e.cause, EngineCrashed):
                    self._revive()
            except Exception as e:  # reported to that request; the worker serves the next one
                self.end_session(job, [], 0.0)
                job._put(("error", e))
            finally:
                self.running.discard(job)

    def _account(self, job: Job, res: Result) -> None:
        self.end_session(job, res.decisions, (res.entropy_summary or {}).get("excess", 0.0))
        if self.metrics is not None:
            self.metrics.observe(job.policy.name, res)
        for observe in self.observers:
            try:
                observe(job, res)
            except Exception as e:  # an observer's fault is its own: the request is served
                log.error("request %s: an observer failed: %s: %s", job.request_id, type(e).__name__, e)

    def _vault(self, job: Job) -> Vault | None:
        """The session's vault when the policy keeps one (None: the request has a vault of its own,
        also when the store cannot be reached: masking never waits on it)."""
        m = job.policy.mask
        if self.vaults is None or not job.session or m is None or m.vault != "session":
            return None
        try:
            return self.vaults.load(job.session_key) or Vault()
        except StoreError as e:
            log.error("request %s: %s; masked with a vault of its own", job.request_id, e)
            return None

    def _keep_vault(self, job: Job, vault: Vault | None) -> None:
        if vault is None or self.vaults is None:
            return
        try:
            self.vaults.save(job.session_key, vault)
        except StoreError as e:
            log.error("request %s: %s; the session's next turn may number its placeholders anew", job.request_id, e)

    def end_session(self, job: Job, decisions: list, entropy: float) -> None:
        """Add what the request decided to its session and free its place, retrying a store that is
        down for a moment (`end` counts once, so a retry never counts twice). A store still down
        after the retries loses this request's count: that is audited and counted in /metrics."""
        if self.sessions is None or not job.session or not job.reserved:
            return
        job.reserved = False
        for wait in END_RETRIES_S:
            try:
                job.session_state = self.sessions.end(job.session_key, job.request_id, decisions, entropy)
                return
            except StoreError as e:
                err = e
                if self.metrics is not None:
                    self.metrics.session_store_errors.labels("end").inc()
                time.sleep(wait)
        d = Decision("session", Action.ERROR, 0, 0, b"", f"session store unavailable; this request's "
                     f"{violations_in(decisions)} violation(s) were not recorded: {err}")
        audit = self.core.audit
        if audit is not None:
            audit.record(job.request_id, job.policy.name, [d])

    def _revive(self) -> None:
        """A fresh engine process before the next job; queued requests wait for it, none is lost."""
        try:
            self.core.ensure_alive()  # /metrics counts the core's restarts
        except Exception as e:  # the next request reports it; the one after tries again
            self.restart_error = str(e)
        else:
            self.restart_error = None


def _text(job: Job, text: str) -> None:
    job._put(("text", text))


def _audited(job: Job, decisions: list[Decision]) -> None:
    job._put(("audited", list(decisions)))
