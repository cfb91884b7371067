"""Sessions: governance state that outlives one request (violations, entropy spent).

A request of a session is bracketed by `begin` and `end`. `begin` is one atomic step: it reads the
session's violations and the requests it has in flight, and under a policy with `escalate_after: N`
admits the request only while violations + in flight < N (else `escalated`, or `busy` while
requests in flight could still reach N), reserving a place for it. `end` adds what the request
decided and frees its place, once (a retried `end` counts nothing twice).

The bound this gives: no request of a session starts once it has N violations, and when the N-th
lands at most N - 1 others are still running (those admitted before it): at most N - 1 responses
are served past the limit, on any number of replicas. A reservation expires after
`reservation_s`, so a replica that dies mid-request does not hold a session's place forever.

`MemorySessionStore` is one process's (the default); `ingate.session_redis.RedisSessionStore`
shares the state between replicas. A store that cannot be reached raises `StoreError`; the
policy's `session: {on_store_error: refuse | allow}` says what the server does then.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from ingate.gate.decision import Decision

# what governance acted on (errors and cancels are not)
VIOLATIONS = frozenset({"prevent", "redact", "stop", "resample", "refuse"})
RESERVATION_S = 900.0  # longer than any request should run (a stream is capped by max_tokens)

OK, ESCALATED, BUSY = "ok", "escalated", "busy"


class StoreError(RuntimeError):
    """The session store cannot be reached (a Redis that is down, a timeout)."""


@dataclass
class SessionState:
    violations: int = 0
    last_seen: float = 0.0
    entropy_spent: float = 0.0  # excess entropy (nats) of the session's responses, for session budgets
    in_flight: int = 0  # requests admitted and not ended (when read by `begin`: before this one)
    by_rule: dict[str, int] = field(default_factory=dict)  # violations per rule id


@dataclass(frozen=True)
class Ticket:
    """What `begin` decided: OK (a place is reserved), ESCALATED or BUSY (none is)."""

    verdict: str
    state: SessionState


def violations_in(decisions: list[Decision]) -> int:
    return sum(d.action in VIOLATIONS for d in decisions)


def by_rule(decisions: list[Decision]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in decisions:
        if d.action in VIOLATIONS:
            out[d.rule_id] = out.get(d.rule_id, 0) + 1
    return out


class SessionStore(Protocol):
    def get(self, session: str) -> SessionState | None: ...

    def begin(self, session: str, request_id: str, escalate_after: int | None) -> Ticket: ...

    def end(self, session: str, request_id: str, decisions: list[Decision], entropy: float = 0.0) -> SessionState: ...

    def health(self) -> dict: ...


def admit(state: SessionState, escalate_after: int | None) -> str:
    """The verdict of `begin`, from the state before this request."""
    if escalate_after is None:
        return OK
    if state.violations >= escalate_after:
        return ESCALATED
    return BUSY if state.violations + state.in_flight >= escalate_after else OK


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
