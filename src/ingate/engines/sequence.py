"""One generation's view of the llama.cpp engine: the `Engine` protocol over one sequence (one KV
stream) of a context that holds several.

A sequence keeps what is decoded into its KV (`ids`), what waits to be (`pending`: the prompt, then
each accepted token), the logits after its prompt, and the output row its logits sit at after the
last decode. `step()` decodes its pending tokens alone when nothing else did; the batched loop
(`ingate.batch`) decodes every sequence's pending tokens in one `llama_decode` first, so that
`step()` only reads its row. Rollback truncates this sequence's KV only (`llama_memory_seq_rm`):
another sequence never sees it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from ingate.engines.base import FULL_LOGITS, ROLLBACK, ContextFull, EngineError
from ingate.engines.context import Entry

if TYPE_CHECKING:
    from ingate.engines.llamacpp import LlamaCppEngine


class Sequence:
    capabilities = frozenset({FULL_LOGITS, ROLLBACK})

    def __init__(self, engine: LlamaCppEngine, seq_id: int):
        self.engine, self.seq_id = engine, seq_id
        self.ids: list[int] = []  # tokens in this sequence's KV
        self.pending: list[int] = []  # tokens to decode next
        self.n_prompt = 0
        self.prompt: list[int] = []
        self.row = -1  # output row of the last decode that gave this sequence logits (-1: none yet)
        self.prompt_logits: np.ndarray | None = None  # the distribution after the prompt
        self.prompt_hidden: np.ndarray | None = None  # and the hidden state it came from
        self.hidden_row = False  # the last decode kept this sequence's hidden state at `row`
        self.reused = 0  # prompt tokens taken from the prefix cache
        self.t_prefill: float | None = None  # when its prompt's evaluation began and ended
        self.prefill_s = 0.0

    # ---- the Engine protocol: what the engine shares -------------------------------------------
    name = property(lambda self: self.engine.name)
    vocab_size = property(lambda self: self.engine.vocab_size)
    n_ctx = property(lambda self: self.engine.n_ctx)

    def token_bytes(self) -> list[bytes]:
        return self.engine.token_bytes()

    def is_eog(self, token: int) -> bool:
        return self.engine.is_eog(token)

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        return self.engine.tokenize(text, special=special, add_bos=add_bos)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return self.engine.chat_prompt(messages)

    def info(self) -> dict:
        return self.engine.info()

    def close(self) -> None:
        self.free()

    # ---- generation --------------------------------------------------------------------------
    def start(self, prompt: list[int]) -> None:
        if not prompt:
            raise EngineError("empty prompt: give some text to generate from")
        if len(prompt) >= self.n_ctx:
            raise ContextFull(f"prompt is {len(prompt)} tokens, over the context of {self.n_ctx}; shorten it")
        self.free()
        self.prompt, self.n_prompt = list(prompt), len(prompt)
        self.t_prefill, self.prefill_s = time.perf_counter(), 0.0
        eng = self.engine
        if eng.split is not None and len(prompt) > 1:
            # split: the batch through plain weights, its KV handed to the decode context, and the
            # last prompt token decoded there, so every logit comes from the decode path.
            head = list(prompt[:-1])
            eng.split.forget(0, 0)
            eng.split.decode([Entry(0, i, t, False) for i, t in enumerate(head)])
            eng.main.load_state(self.seq_id, eng.split.state(0))
            eng.split.forget(0, 0)
            self.ids, self.pending = head, [prompt[-1]]
            return
        n, entry = eng.prefix.lookup(prompt) if eng.prefix is not None else (0, None)
        if entry is not None:
            eng.main.load_state(self.seq_id, entry.state)
            eng.main.forget(self.seq_id, n)
            self.ids, self.reused = list(prompt[:n]), n
        self.pending = list(prompt[len(self.ids):])

    def free(self) -> None:
        """Forget everything of this sequence (its KV too): a new generation starts clean."""
        if self.ids:
            self.engine.main.forget(self.seq_id, 0)
        self.ids, self.pending, self.row = [], [], -1
        self.prompt_logits = self.prompt_hidden = None
        self.hidden_row, self.reused, self.n_prompt = False, 0, 0

    @property
    def prefilling(self) -> bool:
        return len(self.ids) < self.n_prompt

    def entries(self, limit: int) -> list[Entry]:
        """Up to `limit` of its pending tokens as batch entries (the last one decoded asks for logits)."""
        if len(self.ids) + len(self.pending) > self.n_ctx:
            raise ContextFull(f"context of {self.n_ctx} tokens is full; lower max_tokens or the prompt")
        take = self.pending[:limit]
        n0 = len(self.ids)
        last = len(take) == len(self.pending)
        return [Entry(self.seq_id, n0 + i, t, last and i == len(take) - 1) for i, t in enumerate(take)]

    def decoded(self, n: int, row: int, hidden: bool) -> None:
        """`n` pending tokens went into the KV in the last decode; `row`: the output row of the last
        of them (-1 when more are pending)."""
        self.ids += self.pending[:n]
        del self.pending[:n]
        if self.pending:
            return
        self.row, self.hidden_row = row, hidden
        if self.prompt_logits is None and len(self.ids) == self.n_prompt:
            # kept for a rollback to the first generated token: re-evaluating the prompt's last
            # token alone could take other kernels than the prompt's batch (AMX tiles against
            # VNNI) and change the logits' low bits, so the state would not be the fresh one
            self.prompt_logits = np.array(self.engine.main.logits(row), copy=True)
            self.prompt_hidden = self.engine.main.hidden(row) if hidden else None
            self.prefill_s = time.perf_counter() - (self.t_prefill or time.perf_counter())
            self.engine.remember_prompt(self)

    def step(self) -> np.ndarray:
        if self.pending:
            self.engine.decode_alone(self)
        if len(self.ids) == self.n_prompt and self.prompt_logits is not None:
            return self.prompt_logits  # at the prompt's end, first time or rolled back to it
        return self.engine.main.logits(self.row)

    def accept(self, token: int) -> None:
        self.pending.append(token)

    def rollback(self, n: int) -> None:
        if n <= 0:
            return
        drop_pending = min(n, len(self.pending))
        if drop_pending:
            del self.pending[len(self.pending) - drop_pending:]
        n -= drop_pending
        if n:
            self._truncate(len(self.ids) - n)
        if self.pending or not self.ids or (len(self.ids) == self.n_prompt and self.prompt_logits is not None):
            return  # back at the prompt's end, step() returns its logits exactly as first computed
        # The logits the context holds belong to a token we just dropped: re-evaluate the new last
        # token (alone, as it was first) so that step() returns the distribution there.
        last = self.ids[-1]
        self._truncate(len(self.ids) - 1)
        self.pending = [last]

    def _truncate(self, keep: int) -> None:
        self.engine.main.forget(self.seq_id, keep)
        del self.ids[keep:]

    @property
    def n_past(self) -> int:
        return len(self.ids) + len(self.pending)

    @property
    def n_generated(self) -> int:
        """Tokens accepted after the prompt (rolled-back ones not counted)."""
        return max(0, self.n_past - self.n_prompt)

    # ---- hidden states (features for trained heads) -----------------------------------------
    def enable_hidden(self) -> str:
        return self.engine.enable_hidden()

    @property
    def feature_id(self) -> str:
        return self.engine.feature_id

    def hidden(self) -> np.ndarray | None:
        """The last hidden state at the current position: the one the logits of `step()` came from
        (None after a prompt batch, whose states are not computed)."""
        if not self.engine.hidden_on:
            return None
        if len(self.ids) == self.n_prompt and not self.pending:
            return self.prompt_hidden
        return self.engine.main.hidden(self.row) if self.hidden_row else None
