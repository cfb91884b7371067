"""A sample of recent traffic for the policy lab: the released text of recent responses.

Only responses served under a policy that keeps text (`audit: {store_text: true}`) are kept: a
policy that keeps no text in the audit keeps none here either. The sample is this process's
memory, bounded (`KEEP` responses, each cut at `MAX_CHARS`), and is lost at a restart. What it
holds is what the clients were shown: released text, never what the gate withheld.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

from ingate.drivers.base import Result
from ingate.worker import Job

KEEP = 500
MAX_CHARS = 4000


@dataclass(frozen=True)
class Sample:
    ts: float
    request_id: str
    model: str
    policy: str
    text: str


class Traffic:
    def __init__(self, keep: int = KEEP):
        self._items: deque[Sample] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def observer(self, model: str):
        """What a model's worker calls with each generation that ended."""
        def observe(job: Job, res: Result) -> None:
            if job.policy.store_text and res.text and res.finish_reason != "error":
                with self._lock:
                    self._items.append(Sample(time.time(), job.request_id, model, job.policy.name,
                                              res.text[:MAX_CHARS]))
        return observe

    def recent(self, n: int) -> list[Sample]:
        """The `n` newest, newest first."""
        with self._lock:
            return list(self._items)[::-1][:n]

    def __len__(self) -> int:
        return len(self._items)
