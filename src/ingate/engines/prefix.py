"""The prefix cache: the KV of recent prompts, so a request that shares a prefix with one of them (a
system prompt, a policy's preamble, a few-shot block) does not evaluate it again.

An entry is a prompt's tokens and its sequence's KV state as bytes (llama.cpp's per-sequence state:
about 23 KB a token for SmolLM2-135M). A new prompt takes the entry it shares the longest prefix
with (at least `min_tokens`), loads that state into its own sequence and drops the KV past the
shared prefix; the rest of the prompt is evaluated as usual. The reuse is exact: with a KV stream
per sequence, the cells restored sit where a fresh evaluation would put them, and the logits after
a hit are bit-identical to those of the prompt evaluated whole (tests/test_batch.py).

Bounded in bytes, least recently used evicted first. Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

MIN_TOKENS = 64  # shorter shared prefixes cost more to copy than to evaluate


@dataclass
class Entry:
    tokens: tuple[int, ...]
    state: object  # a ctypes byte buffer
    nbytes: int


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    tokens_reused: int = 0
    stored: int = 0
    evicted: int = 0


class PrefixCache:
    def __init__(self, max_bytes: int, min_tokens: int = MIN_TOKENS):
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self.nbytes = 0
        self.stats = Stats()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt: list[int]) -> tuple[int, Entry | None]:
        """(tokens shared, entry) for the entry that shares the longest prefix with `prompt`, leaving
        at least its last two tokens to evaluate; (0, None) below `min_tokens`."""
        best, found = 0, None
        with self._lock:
            for key, e in self._entries.items():
                n = _common(key, prompt)
                if n > best:
                    best, found = n, e
            # at least two prompt tokens are evaluated: the logits of the last start the reply, and a prompt
            # position in a one-token pass would not have the bits of the prompt's batch (engines/llamacpp.py)
            best = min(best, len(prompt) - 2)
            if found is None or best < self.min_tokens:
                self.stats.misses += 1
                return 0, None
            self._entries.move_to_end(found.tokens)
            self.stats.hits += 1
            self.stats.tokens_reused += best
            return best, found

    def covers(self, prompt: list[int]) -> bool:
        """Is `prompt` the prefix of an entry already (nothing to store)?"""
        t = tuple(prompt)
        with self._lock:
            return any(key[:len(t)] == t for key in self._entries)

    def store(self, tokens: list[int], state, nbytes: int) -> None:
        if nbytes > self.max_bytes or len(tokens) < self.min_tokens:
            return
        key = tuple(tokens)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            for k in [k for k in self._entries if tokens[:len(k)] == list(k)]:  # a shorter prefix of this one
                self.nbytes -= self._entries.pop(k).nbytes
            self._entries[key] = Entry(key, state, nbytes)
            self.nbytes += nbytes
            self.stats.stored += 1
            while self.nbytes > self.max_bytes and self._entries:
                _, e = self._entries.popitem(last=False)
                self.nbytes -= e.nbytes
                self.stats.evicted += 1

    def summary(self) -> dict:
        s = self.stats
        return {"entries": len(self._entries), "bytes": self.nbytes, "max_bytes": self.max_bytes, "hits": s.hits,
                "misses": s.misses, "tokens_reused": s.tokens_reused, "stored": s.stored, "evicted": s.evicted}


def _common(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
