"""Sessions: governance state that outlives a request, one protocol (`SessionStore`), two stores
(this process's memory, or Redis shared by replicas), chosen by `open_sessions`'s URL."""

from __future__ import annotations

from ingate.store.sessions.base import (
    BUSY,
    ESCALATED,
    OK,
    RESERVATION_S,
    VIOLATIONS,
    SessionState,
    SessionStore,
    StoreError,
    Ticket,
    admit,
    by_rule,
    violations_in,
)
from ingate.store.sessions.memory import MemorySessionStore

__all__ = ["BUSY", "ESCALATED", "OK", "RESERVATION_S", "VIOLATIONS", "MemorySessionStore", "SessionState",
           "SessionStore", "StoreError", "Ticket", "admit", "by_rule", "open_sessions", "violations_in"]
SCHEMES = ("redis://", "rediss://", "unix://")


def open_sessions(url: str | None, prefix: str = "ingate", ttl: float = 3600.0) -> SessionStore:
    """The store a URL names: 'memory' (or None: this process's) or redis://HOST:PORT/DB (shared by
    every replica that names it, under `prefix`). A bad URL raises StoreError saying what to write;
    a Redis that does not answer yet is returned all the same (each policy's on_store_error decides
    what its requests get, and /healthz says it)."""
    if url is None or url == "memory":
        return MemorySessionStore(ttl)
    if not url.startswith(SCHEMES):
        raise StoreError(f"--sessions {url!r}: use 'memory' or redis://HOST:PORT/DB")
    from ingate.store.sessions.redis import RedisSessionStore

    return RedisSessionStore(url, prefix, ttl)
