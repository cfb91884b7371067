"""What a key's limits are, and what admitting a request against them decides.

The windows, the same in every store (docs/server.md, "Per-key limits"):
- requests per minute: the requests admitted in the last 60 seconds (a sliding window, to the
  microsecond). A request is admitted only while fewer than the limit were; admitting counts it,
  in the same atomic step, so no race admits one more. A request turned away after it was admitted
  (a full queue, a busy session) is released and does not count.
- tokens per minute: the tokens charged in the last 60 seconds, counted by the second (a charge
  made during second s counts until s + 60).
- tokens per day: the tokens charged since 00:00 UTC.
A request is admitted only while every window is under its limit; its tokens are charged when it
ends. A request's tokens are its `usage.total_tokens`: prompt tokens plus completion tokens. So a
key can pass its token limits by what the requests it had in flight when it reached them use, never
start a request after.

`Retry-After` is when every window that refused would admit again, if nothing else is charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

WINDOW_S = 60
DAY_S = 86400
RPM, TPM, TPD = "requests_per_minute", "tokens_per_minute", "tokens_per_day"
LIMITS = (RPM, TPM, TPD)


@dataclass(frozen=True)
class Limits:
    """A key's limits; None: no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in self.as_dict().values())

    def as_dict(self) -> dict[str, int | None]:
        return {RPM: self.requests_per_minute, TPM: self.tokens_per_minute, TPD: self.tokens_per_day}


@dataclass(frozen=True)
class Verdict:
    """What `admit` decided: `limit` is None when admitted (and counted), else the limit that refused
    (the one whose window clears last) and the seconds until it would admit. `used`: each window's
    count before this request."""

    limit: str | None
    retry_after: float
    used: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.limit is None


class LimitStore(Protocol):
    def admit(self, key_id: str, request_id: str, limits: Limits) -> Verdict: ...

    def release(self, key_id: str, request_id: str) -> None: ...

    def charge(self, key_id: str, request_id: str, tokens: int) -> None: ...

    def usage(self, key_id: str) -> dict[str, int]: ...


def refusal(limits: Limits, used: dict[str, int], retries: dict[str, float]) -> Verdict:
    """The verdict from each window's count and the wait until it would admit: refused by the limit
    that clears last, or admitted."""
    over = {k: retries[k] for k, lim in limits.as_dict().items() if lim is not None and used[k] >= lim}
    if not over:
        return Verdict(None, 0.0, used)
    worst = max(over, key=lambda k: over[k])
    return Verdict(worst, max(0.0, over[worst]), used)
