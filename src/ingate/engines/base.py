"""The engine interface the loop drives: step -> logits, accept a token, roll back n tokens."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class EngineError(RuntimeError):
    """The engine cannot run (a missing model file, a context overflow); the message says what to fix."""


class Engine(Protocol):
    name: str
    vocab_size: int
    n_ctx: int  # context length in tokens: prompt plus output

    def token_bytes(self) -> list[bytes]:
        """The text bytes of every token id (empty for control tokens): what masks are computed on."""
        ...

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens."""
        ...

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat, rendered with the model's own template, ready for the reply."""
        ...

    def start(self, prompt: list[int]) -> None:
        """Begin a generation after `prompt` (reusing any cached common prefix)."""
        ...

    def step(self) -> np.ndarray:
        """Logits for the next token (float32, length vocab_size). Callers must not keep it."""
        ...

    def accept(self, token: int) -> None:
        """Append a token to the context."""
        ...

    def rollback(self, n: int) -> None:
        """Forget the last n accepted tokens (KV-cache truncation)."""
        ...
