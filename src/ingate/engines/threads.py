"""How many threads llama.cpp decodes with: fixed (INGATE_THREADS=N) or tuned while it runs (auto).

Why tune continuously rather than once at start: on an idle 2-core box two threads decode 2.2-2.6x
faster than one, but with the other core busy (another process, the semantic encoder) two
threads are slower at the median and have 150-270 ms tails, because llama.cpp's threads meet at
a barrier in every layer and one of them waits out a scheduler slice. A choice made at start is
wrong as soon as the load changes. The thread count does not change the logits (they are
bit-identical; tests/test_engine.py checks it on every CPU the suite runs on), so the tuner can
switch between two tokens without changing any text.
"""

from __future__ import annotations

import os
import statistics

from ingate.engines.base import EngineError


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_setting() -> int | None:
    """INGATE_THREADS: a whole number fixes the thread count; unset or `auto` tunes it (None)."""
    raw = os.environ.get("INGATE_THREADS", "auto").strip().lower()
    if raw in ("", "auto"):
        return None
    try:
        n = int(raw)
    except ValueError:
        raise EngineError(f"INGATE_THREADS={raw!r} is neither a whole number nor 'auto'") from None
    if n < 1:
        raise EngineError(f"INGATE_THREADS={n} must be at least 1 (or 'auto')")
    return n


def candidates(cores: int | None = None) -> list[int]:
    cores = cores or usable_cores()
    top = min(cores, 16)
    return sorted({n for n in (1, 2, 4, 8, 16, top) if n <= top})


class ThreadTuner:
    """Picks the decode thread count from measured single-token decode times, and keeps picking.

    It measures each candidate for `explore_steps` decodes, runs the fastest (the fewest threads
    within `margin` of the fastest), re-measures its choice every `window` decodes and switches
    when another candidate's last measurement is clearly better, and re-measures the others every
    `explore_every` decodes, since their figures go stale as the load on the machine changes.
    """

    def __init__(self, choices: list[int], window: int = 32, explore_every: int = 512,
                 explore_steps: int = 8, margin: float = 0.10):
        if not choices:
            raise ValueError("no thread counts to choose from")
        self.choices = sorted(choices)
        self.window, self.explore_every, self.explore_steps, self.margin = window, explore_every, explore_steps, margin
        self.estimate: dict[int, float | None] = {n: None for n in self.choices}
        self.current = self.choices[-1]
        self._queue = list(reversed(self.choices)) if len(self.choices) > 1 else []  # to measure, in order
        if self._queue:
            self.current = self._queue.pop(0)
        self._buf: list[float] = []
        self._exploring = len(self.choices) > 1
        self._since_explore = 0
        self.switches = 0

    def best(self) -> int:
        known = {n: t for n, t in self.estimate.items() if t is not None}
        if not known:
            return self.current
        fastest = min(known.values())
        return min(n for n, t in known.items() if t <= fastest * (1 + self.margin))

    def record(self, seconds: float) -> int | None:
        """One single-token decode took `seconds` at `current` threads; returns a new count or None."""
        self._buf.append(seconds)
        need = self.explore_steps if self._exploring else self.window
        if len(self._buf) < need:
            return None
        self.estimate[self.current] = statistics.median(self._buf)
        self._buf.clear()
        if self._queue:  # go on measuring the next candidate
            return self._switch(self._queue.pop(0))
        if self._exploring:
            self._exploring = False
        else:
            self._since_explore += need
            if self._since_explore >= self.explore_every and len(self.choices) > 1:
                self._since_explore = 0
                others = [n for n in reversed(self.choices) if n != self.current]
                self._queue, self._exploring = others[1:], True
                return self._switch(others[0])
        return self._switch(self.best())

    def _switch(self, n: int) -> int | None:
        if n == self.current:
            return None
        self.current = n
        self.switches += 1
        return n

    def summary(self) -> dict:
        return {"mode": "auto", "current": self.current,
                "ms_per_token": {n: round(t * 1000, 2) for n, t in self.estimate.items() if t is not None},
                "switches": self.switches}
