"""One loaded copy of the weights and one llama.cpp context over it, with a KV stream per sequence.

The context keeps `n_seq` sequences, each in a KV stream of its own (`kv_unified = false`): a
sequence's cells sit in its own buffer at the positions they would have if it ran alone, so the
attention over them sums the same values in the same order whatever the other sequences hold
(padding cells are masked to exact zeros). That is what makes batching transparent: on the CPUs
measured, a sequence's logits are bit-identical alone, in a batch with others, and with its prompt
evaluated in chunks between their tokens (tests/test_batch.py checks it where the suite runs).

One `decode` appends tokens of several sequences in one `llama_decode`: the weights are read once
for all of them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ingate.engines.base import EngineError
from ingate.engines.files import quiet_stderr

N_BATCH = 512  # tokens one llama_decode takes (more are split into several)


class Entry(NamedTuple):
    """One token of a batch: its sequence, position, id, and whether its output (logits) is kept."""

    seq: int
    pos: int
    token: int
    output: bool


class Context:
    def __init__(self, lc, path: Path, extra_bufts: bool, n_ctx_seq: int, n_seq: int, n_threads: int,
                 n_ubatch: int):
        self.lc = lc
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = extra_bufts
        with quiet_stderr():
            model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise EngineError(f"cannot load model {str(path)!r}; is it a GGUF file llama.cpp supports?")
        self.model = model
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx_seq * n_seq
        cp.n_batch = N_BATCH
        cp.n_ubatch = n_ubatch
        cp.n_seq_max = n_seq
        cp.kv_unified = False  # a KV stream per sequence: batching never changes a sequence's logits
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        # llama.cpp's own default is "auto" (on, on CPU); off as in llama-cpp-python's Llama, whose
        # outputs ingate matched before it drove the C API itself. Speed is the same here.
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with quiet_stderr():
            ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            lc.llama_model_free(model)
            raise EngineError(f"cannot create a llama.cpp context of {n_seq} x {n_ctx_seq} tokens; lower n_ctx "
                              "or --parallel")
        self.ctx, self.n_seq = ctx, n_seq
        self.mem = lc.llama_get_memory(ctx)
        self.batch = lc.llama_batch_init(N_BATCH, 0, 1)
        self.n_vocab = int(lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model)))
        self.n_embd = int(lc.llama_model_n_embd(model))

    def decode(self, entries: Sequence[Entry]) -> list[int]:
        """Append the entries' tokens to their sequences' KV; returns, per entry with `output`, the
        row its logits (and hidden state) are read at after the last llama_decode (-1: they were
        in an earlier chunk of a batch over N_BATCH tokens, and are gone)."""
        lc, b = self.lc, self.batch
        rows = [-1] * len(entries)
        for i in range(0, len(entries), N_BATCH):
            chunk = entries[i:i + N_BATCH]
            b.n_tokens = len(chunk)
            for j, e in enumerate(chunk):
                b.token[j] = e.token
                b.pos[j] = e.pos
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = e.seq
                b.logits[j] = e.output
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise EngineError(f"llama_decode failed with status {rc} on a batch of {len(chunk)} tokens")
            last = i + N_BATCH >= len(entries)
            for j, e in enumerate(chunk):
                if e.output and last:
                    rows[i + j] = j
        return rows

    def forget(self, seq: int, keep: int) -> None:
        """Drop a sequence's KV from position `keep` on."""
        self.lc.llama_memory_seq_rm(self.mem, seq, keep, -1)

    def logits(self, row: int) -> np.ndarray:
        """The logits at an output row of the last decode (a view: the next decode overwrites it)."""
        return np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))

    def hidden(self, row: int) -> np.ndarray | None:
        """The last hidden layer at an output row of the last decode (a copy), when embeddings are on."""
        ptr = self.lc.llama_get_embeddings_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy() if ptr else None

    def set_embeddings(self, on: bool) -> None:
        self.lc.llama_set_embeddings(self.ctx, on)

    def set_threads(self, n: int) -> None:
        self.lc.llama_set_n_threads(self.ctx, n, n)

    def state(self, seq: int):
        """A sequence's KV as bytes (what `load_state` puts back, into any sequence)."""
        size = self.lc.llama_state_seq_get_size(self.ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        got = self.lc.llama_state_seq_get_data(self.ctx, buf, size, seq)
        if got != size:
            raise EngineError(f"llama_state_seq_get_data copied {got} of {size} bytes")
        return buf

    def load_state(self, seq: int, buf) -> None:
        self.forget(seq, 0)
        if self.lc.llama_state_seq_set_data(self.ctx, buf, len(buf), seq) == 0:
            raise EngineError("llama_state_seq_set_data refused a sequence's KV state")

    def close(self) -> None:
        if self.batch is not None:
            self.lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            self.lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lc.llama_model_free(self.model)
            self.model = None
