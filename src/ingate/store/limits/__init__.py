"""Per-key limits: requests per minute, tokens per minute, tokens per day. One protocol
(`LimitStore`), two stores (this process's memory, or Redis shared by replicas), chosen by
`open_limits`'s URL: the same URL as the sessions' (`serve --sessions`)."""

from __future__ import annotations

from ingate.store.limits.base import DAY_S, LIMITS, WINDOW_S, Limits, LimitStore, Verdict
from ingate.store.limits.memory import MemoryLimitStore

__all__ = ["DAY_S", "LIMITS", "WINDOW_S", "LimitStore", "Limits", "MemoryLimitStore", "Verdict", "open_limits"]


def open_limits(url: str | None, prefix: str = "ingate") -> LimitStore:
    """'memory' (or None): this process's counts; redis://...: counts every replica naming it shares."""
    if url is None or url == "memory":
        return MemoryLimitStore()
    from ingate.store.limits.redis import RedisLimitStore

    return RedisLimitStore(url, prefix)
