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

`store.sessions.memory` keeps one process's (the default); `store.sessions.redis`
shares the state between replicas. A store that cannot be reached raises `StoreError`; the
policy's `session: {on_store_error: refuse | allow}` says what the server does then.
"""

from __future__ import annotations

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
