"""Per-key limits at the server: admit or answer 429, charge what a request used, count it per key.

A key's limits (its keys-file entry, ingate.keys) are kept in a `LimitStore` (ingate.store.limits):
this process's memory, or the Redis of `--sessions redis://...`, shared by every replica. Over a
limit, the answer is OpenAI's: status 429, `Retry-After` (whole seconds), and an error body whose
type is `requests` or `tokens` and whose code is `rate_limit_exceeded`.

A store that does not answer lets requests through (fail open: a Redis outage must not stop every
tenant), logs it and counts it in /metrics (`ingate_limit_store_errors`).

/metrics counts, per key id (never the key): requests and tokens (prompt and completion), the
requests each limit turned away, and each limited key's windows as the store has them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from ingate.api.openai import ApiError
from ingate.drivers.base import Result
from ingate.keys import Grant
from ingate.store.limits import LIMITS, LimitStore, Verdict
from ingate.store.sessions.base import StoreError

log = logging.getLogger("ingate.limits")
PER = {"requests_per_minute": "requests per minute", "tokens_per_minute": "tokens per minute",
       "tokens_per_day": "tokens per day (UTC)"}


class KeyMetrics:
    """The per-key series of /metrics."""

    def __init__(self, r: CollectorRegistry):
        self.requests = Counter("ingate_key_requests", "Generations finished, per API key id", ["key_id"],
                                registry=r)
        self.tokens = Counter("ingate_key_tokens", "Tokens used per API key id: prompt or completion, as usage "
                              "counts them", ["key_id", "kind"], registry=r)
        self.limited = Counter("ingate_key_rate_limited", "Requests a key's limit turned away (429)",
                               ["key_id", "limit"], registry=r)
        self.used = Gauge("ingate_key_limit_used", "A limited key's window now (all replicas sharing the store)",
                          ["key_id", "limit"], registry=r)
        self.limit = Gauge("ingate_key_limit", "A key's configured limit", ["key_id", "limit"], registry=r)
        self.store_errors = Counter("ingate_limit_store_errors", "Limit store calls that failed", ["op"], registry=r)


def too_many(grant: Grant, v: Verdict) -> ApiError:
    """OpenAI's 429 for a limit reached: Retry-After, type requests or tokens, code rate_limit_exceeded."""
    assert v.limit is not None and grant.limits is not None
    limit = grant.limits.as_dict()[v.limit]
    wait = max(1, math.ceil(v.retry_after))
    return ApiError(429, f"Rate limit reached for key {grant.key_id} on {PER[v.limit]}: limit {limit}, used "
                         f"{v.used[v.limit]}. Please try again in {wait}s.", code="rate_limit_exceeded",
                    type_="requests" if v.limit == "requests_per_minute" else "tokens",
                    headers={"Retry-After": str(wait)})


class KeyLimits:
    """The server's side of the limits: one store, the per-key metrics."""

    def __init__(self, store: LimitStore, metrics: KeyMetrics):
        self.store, self.metrics = store, metrics

    async def admit(self, grant: Grant, request_id: str) -> bool:
        """Count the request against its key's limits, or raise the 429. True when it was counted
        (so `release` must undo it if the request is turned away before it runs)."""
        if not grant.limits or grant.key_id is None:
            return False
        try:
            v = await asyncio.to_thread(self.store.admit, grant.key_id, request_id, grant.limits)
        except StoreError as e:
            self.metrics.store_errors.labels("admit").inc()
            log.error("request %s: key %s admitted unchecked: %s", request_id, grant.key_id, e)
            return False
        if not v.ok:
            self.metrics.limited.labels(grant.key_id, v.limit).inc()
            raise too_many(grant, v)
        return True

    async def release(self, grant: Grant, request_id: str) -> None:
        assert grant.key_id is not None
        try:
            await asyncio.to_thread(self.store.release, grant.key_id, request_id)
        except StoreError as e:
            self.metrics.store_errors.labels("release").inc()
            log.error("request %s: %s", request_id, e)

    def charge(self, grant: Grant, request_id: str, res: Result) -> None:
        """What the request used, per key id in /metrics and against its token limits (before its
        client hears the end, so its next request sees it). Called from a worker thread."""
        if grant.key_id is None:
            return
        self.metrics.requests.labels(grant.key_id).inc()
        self.metrics.tokens.labels(grant.key_id, "prompt").inc(res.prompt_tokens)
        self.metrics.tokens.labels(grant.key_id, "completion").inc(res.completion_tokens)
        if not grant.limits:
            return
        try:
            self.store.charge(grant.key_id, request_id, res.prompt_tokens + res.completion_tokens)
        except StoreError as e:
            self.metrics.store_errors.labels("charge").inc()
            log.error("request %s: key %s: its tokens were not charged: %s", request_id, grant.key_id, e)

    def refresh(self, grants: Iterable[Grant]) -> None:
        """Each limited key's windows, for a scrape."""
        for g in grants:
            if not g.limits or g.key_id is None:
                continue
            for name, lim in g.limits.as_dict().items():
                if lim is not None:
                    self.metrics.limit.labels(g.key_id, name).set(lim)
            try:
                used = self.store.usage(g.key_id)
            except StoreError as e:
                self.metrics.store_errors.labels("usage").inc()
                log.error("key %s: usage unavailable: %s", g.key_id, e)
                continue
            for name in LIMITS:
                if g.limits.as_dict()[name] is not None:
                    self.metrics.used.labels(g.key_id, name).set(used[name])
