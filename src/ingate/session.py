"""Sessions: governance state that outlives one request (violations, entropy spent).

The store is an interface so that replicas can share state (a Redis store comes next); the
in-memory store is the default and forgets a session `ttl` seconds after its last use.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from ingate.gate.decision import Decision

# what governance acted on (errors and cancels are not)
VIOLATIONS = frozenset({"prevent", "redact", "stop", "resample", "refuse"})


@dataclass
class SessionState:
    violations: int = 0
    last_seen: float = 0.0
    entropy_spent: float = 0.0  # excess entropy (nats) of the session's responses, for session budgets


class SessionStore(Protocol):
    def get(self, session: str) -> SessionState | None: ...

    def record(self, session: str, decisions: list[Decision], entropy: float = 0.0) -> SessionState: ...


class MemorySessionStore:
    def __init__(self, ttl: float = 3600.0):
        self.ttl = ttl
        self._s: dict[str, SessionState] = {}
        self._lock = threading.Lock()

    def get(self, session: str) -> SessionState | None:
        with self._lock:
            st = self._s.get(session)
            if st is not None and time.monotonic() - st.last_seen > self.ttl:
                del self._s[session]
                return None
            return st

    def record(self, session: str, decisions: list[Decision], entropy: float = 0.0) -> SessionState:
        now = time.monotonic()
        with self._lock:
            st = self._s.get(session)
            if st is None or now - st.last_seen > self.ttl:
                st = self._s[session] = SessionState()
            st.last_seen = now
            st.entropy_spent += entropy
            st.violations += sum(d.action in VIOLATIONS for d in decisions)
            if len(self._s) > 100_000:  # bound memory: drop what has expired
                self._s = {k: v for k, v in self._s.items() if now - v.last_seen <= self.ttl}
            return st
