"""Sessions in one process's memory (the default): forgotten `ttl` seconds after their last use."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ingate.gate.decision import Decision
from ingate.store.sessions.base import OK, RESERVATION_S, SessionState, Ticket, admit, by_rule, violations_in


@dataclass
class _Entry:
    state: SessionState = field(default_factory=SessionState)
    in_flight: dict[str, float] = field(default_factory=dict)  # request id -> reservation expiry
    ended: dict[str, None] = field(default_factory=dict)  # the last request ids ended, in order


class MemorySessionStore:
    """One process's sessions, forgotten `ttl` seconds after their last use."""

    def __init__(self, ttl: float = 3600.0, reservation_s: float = RESERVATION_S):
        self.ttl, self.reservation_s = ttl, reservation_s
        self._s: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, session: str) -> SessionState | None:
        with self._lock:
            e = self._live(session, time.monotonic())
            return None if e is None else self._read(e)

    def begin(self, session: str, request_id: str, escalate_after: int | None) -> Ticket:
        now = time.monotonic()
        with self._lock:
            e = self._live(session, now) or self._s.setdefault(session, _Entry())
            e.in_flight = {r: t for r, t in e.in_flight.items() if t > now}
            state = self._read(e)
            verdict = admit(state, escalate_after)
            if verdict == OK:
                e.in_flight[request_id] = now + self.reservation_s
            e.state.last_seen = now
            return Ticket(verdict, state)

    def end(self, session: str, request_id: str, decisions: list[Decision], entropy: float = 0.0) -> SessionState:
        now = time.monotonic()
        with self._lock:
            e = self._live(session, now) or self._s.setdefault(session, _Entry())
            e.in_flight.pop(request_id, None)
            if request_id not in e.ended:
                e.ended[request_id] = None
                if len(e.ended) > 1024:  # a retried end comes at once: the last few hundred suffice
                    e.ended = dict.fromkeys(list(e.ended)[-512:])
                e.state.violations += violations_in(decisions)
                e.state.entropy_spent += entropy
                for rule, n in by_rule(decisions).items():
                    e.state.by_rule[rule] = e.state.by_rule.get(rule, 0) + n
            e.state.last_seen = now
            if len(self._s) > 100_000:  # bound memory: drop what has expired
                self._s = {k: v for k, v in self._s.items() if now - v.state.last_seen <= self.ttl}
            return self._read(e)

    def health(self) -> dict:
        return {"kind": "memory", "ok": True, "sessions": len(self._s)}

    def _live(self, session: str, now: float) -> _Entry | None:
        e = self._s.get(session)
        if e is not None and now - e.state.last_seen > self.ttl and not e.in_flight:
            del self._s[session]
            return None
        return e

    @staticmethod
    def _read(e: _Entry) -> SessionState:
        s = e.state
        return SessionState(s.violations, s.last_seen, s.entropy_spent, len(e.in_flight), dict(s.by_rule))
