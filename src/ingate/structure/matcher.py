"""The structure's matcher over one stream: llguidance's `LLMatcher`, driven beside the gate.

`TokenMatcher` is for a loop that samples (ingate's own): a mask per step, ANDed with the gate's,
one `consume` per accepted token and a `rollback` whenever the engine rolls back, so the two
never disagree about the text. `TextMatcher` checks text an upstream wrote, byte by byte,
against the same structure (a tokenizer of the 256 bytes), so a violation is found at its first
byte, before the gate can release it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import llguidance
import numpy as np

from ingate.structure.spec import Structure

# llguidance's lexer gives up on a token after this much work; the default is low for big
# complement grammars (bench/masks.py) and a JSON schema with long patterns can reach it.
STEP_LEXER_FUEL = 2_000_000


class StructureViolation(RuntimeError):
    """A token or text the structure does not allow (the matcher's own error says where)."""


def _matcher(tok: llguidance.LLTokenizer, grammar: str) -> llguidance.LLMatcher:
    limits = llguidance.LLParserLimits(step_lexer_fuel=STEP_LEXER_FUEL)
    m = llguidance.LLMatcher(tok, grammar, log_level=0, limits=limits)
    if m.is_error():
        raise StructureViolation(f"the structure's grammar did not load: {m.get_error()}")
    return m


def tokenizer_for(token_bytes: list[bytes], eos: list[int], tokenize: Callable[[bytes], list[int]]
                  ) -> llguidance.LLTokenizer:
    """An llguidance tokenizer over an engine's vocabulary: its token bytes, end tokens and
    tokenizer. Tokens with no bytes (control tokens) are special: never allowed inside structure."""
    class _Vocab:
        eos_token_id = eos[0]
        bos_token_id = None
        tokens = token_bytes
        special_token_ids = sorted({t for t, b in enumerate(token_bytes) if not b} | set(eos))

        def __call__(self, s: bytes | str) -> list[int]:
            return tokenize(s if isinstance(s, bytes) else s.encode())

    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Vocab()), n_vocab=len(token_bytes), eos_token=eos)


class _Matched:
    """What both matchers share: llguidance's matcher of one structure, its end and its rollback."""

    unit = "tokens"

    def __init__(self, structure: Structure, tok: llguidance.LLTokenizer, grammar: str):
        self.structure = structure
        self.m = _matcher(tok, grammar)

    def rollback(self, n: int) -> None:
        if n and not self.m.rollback(n):
            raise StructureViolation(f"the structure's matcher could not roll back {n} {self.unit}: "
                                     f"{self.m.get_error()}")

    @property
    def done(self) -> bool:
        """The structure is complete and nothing more may follow it."""
        return self.m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self.m.is_accepting()


class TokenMatcher(_Matched):
    """A structure over an engine's tokens. `forbidden()` is cached until the next consume/rollback."""

    def __init__(self, structure: Structure, tok: llguidance.LLTokenizer, vocab_size: int):
        super().__init__(structure, tok, structure.grammar())
        self.n = vocab_size
        self._forbidden: np.ndarray | None = None

    def forbidden(self) -> np.ndarray:
        """bool per token: True where the structure does not allow the token next."""
        if self._forbidden is None:
            words = np.frombuffer(self.m.compute_bitmask(), dtype=np.uint8)
            if self.m.is_error():
                raise StructureViolation(f"the structure's matcher failed: {self.m.get_error()}")
            self._forbidden = np.unpackbits(words, bitorder="little")[:self.n] == 0
        return self._forbidden

    def consume(self, token: int) -> None:
        if not self.m.consume_token(token):
            raise StructureViolation(f"token {token} breaks the structure: {self.m.get_error()}")
        self._forbidden = None

    def rollback(self, n: int) -> None:
        super().rollback(n)
        self._forbidden = None


class _Bytes:
    """A vocabulary of the 256 bytes, and an end token."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b""]
    special_token_ids = [256]

    def __call__(self, s: bytes | str) -> list[int]:
        return list(s if isinstance(s, bytes) else s.encode())


@functools.cache
def byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_Bytes()))


class TextMatcher(_Matched):
    """A structure over text, one byte at a time: what an upstream wrote is checked before release.
    Lenient about whitespace between JSON tokens (an upstream formats as it likes)."""

    unit = "bytes"

    def __init__(self, structure: Structure):
        super().__init__(structure, byte_tokenizer(), structure.grammar(lenient=True))

    def feed(self, data: bytes) -> int:
        """Consume the longest prefix of `data` the structure allows; how many bytes that was."""
        ok = self.m.try_consume_tokens(list(data))
        if self.m.is_error():
            raise StructureViolation(f"the structure's matcher failed: {self.m.get_error()}")
        return ok
