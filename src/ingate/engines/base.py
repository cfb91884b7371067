"""The engine interface the loop drives: step -> logits, accept a token, roll back n tokens."""

from __future__ import annotations

import signal
from typing import Protocol

import numpy as np


class EngineError(RuntimeError):
    """The engine cannot run (a missing model file, a context overflow); the message says what to fix."""


class ContextFull(EngineError):
    """The prompt, or prompt plus output, does not fit the model's context: the request's fault."""


class EngineCrashed(EngineError):
    """The engine's process died (a native crash in llama.cpp). The requests it was serving end
    with this error; the next request gets a fresh engine process."""


def exit_reason(code: int | None) -> str:
    """How a child process ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"died from {signal.Signals(-code).name}"
        except ValueError:
            return f"died from signal {-code}"
    return f"exited with status {code}"


# What an engine can do, so that a driver picks the guarantees it can keep (docs/architecture.md):
FULL_LOGITS = "full_logits"  # step() returns every token's logit: masks apply before sampling
ROLLBACK = "rollback"  # rollback(n) truncates the KV cache: a held partial match can be taken back
BATCH = "batch"  # many sequences per step (vLLM); ingate's own loop runs one


class Engine(Protocol):
    name: str
    vocab_size: int
    n_ctx: int  # context length in tokens: prompt plus output
    capabilities: frozenset[str]  # of FULL_LOGITS, ROLLBACK, BATCH

    def token_bytes(self) -> list[bytes]:
        """The text bytes of every token id (empty for control tokens): what masks are computed on."""
        ...

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens."""
        ...

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of a raw text (completions; benchmarks)."""
        ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the model's own template, ready for the reply."""
        ...

    def start(self, prompt: list[int]) -> None:
        """Begin a generation after `prompt`."""
        ...

    def step(self) -> np.ndarray:
        """Logits for the next token (float32, length vocab_size). Callers must not keep it: the
        next call overwrites it."""
        ...

    def accept(self, token: int) -> None:
        """Append a token to the context."""
        ...

    def rollback(self, n: int) -> None:
        """Forget the last n accepted tokens (KV-cache truncation)."""
        ...

    def info(self) -> dict:
        """What `ingate doctor`, /healthz and bug reports show: model, layout, threads, ..."""
        ...

    def close(self) -> None:
        """Free the model (and stop its process, if it has one)."""
        ...
