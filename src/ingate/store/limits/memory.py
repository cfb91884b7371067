"""Per-key limits in one process's memory (the default, with `--sessions memory`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ingate.store.limits.base import DAY_S, RPM, TPD, TPM, WINDOW_S, Limits, Verdict, refusal


@dataclass
class _Key:
    requests: dict[str, float] = field(default_factory=dict)  # request id -> when admitted, in order
    seconds: dict[int, int] = field(default_factory=dict)  # second -> tokens charged in it
    day: int = 0
    day_tokens: int = 0


class MemoryLimitStore:
    """One process's counts, under one lock: each `admit` is one atomic step."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._keys: dict[str, _Key] = {}
        self._lock = threading.Lock()

    def _prune(self, k: _Key, now: float) -> None:
        k.requests = {r: t for r, t in k.requests.items() if t > now - WINDOW_S}
        sec = int(now)
        k.seconds = {s: n for s, n in k.seconds.items() if s > sec - WINDOW_S}
        if k.day != sec // DAY_S:
            k.day, k.day_tokens = sec // DAY_S, 0

    def _used(self, k: _Key) -> dict[str, int]:
        return {RPM: len(k.requests), TPM: sum(k.seconds.values()), TPD: k.day_tokens}

    def admit(self, key_id: str, request_id: str, limits: Limits) -> Verdict:
        now = self.clock()
        with self._lock:
            k = self._keys.setdefault(key_id, _Key())
            self._prune(k, now)
            used = self._used(k)
            retries = {RPM: 0.0, TPM: 0.0, TPD: (k.day + 1) * DAY_S - now}
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            if rpm is not None and used[RPM] >= rpm:  # wait until enough of the oldest leave the window
                retries[RPM] = sorted(k.requests.values())[used[RPM] - rpm] + WINDOW_S - now
            if tpm is not None and used[TPM] >= tpm:
                left = used[TPM]
                for s in sorted(k.seconds):
                    left -= k.seconds[s]
                    if left < tpm:
                        retries[TPM] = s + WINDOW_S - now
                        break
            v = refusal(limits, used, retries)
            if v.ok:
                k.requests[request_id] = now
            return v

    def release(self, key_id: str, request_id: str) -> None:
        with self._lock:
            k = self._keys.get(key_id)
            if k is not None:
                k.requests.pop(request_id, None)

    def charge(self, key_id: str, request_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        now = self.clock()
        with self._lock:
            k = self._keys.setdefault(key_id, _Key())
            self._prune(k, now)
            k.seconds[int(now)] = k.seconds.get(int(now), 0) + tokens
            k.day_tokens += tokens

    def usage(self, key_id: str) -> dict[str, int]:
        with self._lock:
            k = self._keys.setdefault(key_id, _Key())
            self._prune(k, self.clock())
            return self._used(k)
