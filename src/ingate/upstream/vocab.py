"""An upstream's tokenizer, when the models file names it (`tokenizer: embedded` or a GGUF path).

Knowing it makes two things exact: `logit_bias` against the token ids that would start a withdrawn
match, and the chat template, so a continuation can go to `/v1/completions` as the rendered chat
plus the admitted text. Only the vocabulary is loaded (llama.cpp `vocab_only`): no weights.
"""

from __future__ import annotations

import atexit
import threading
from functools import cache

from ingate.engines.llamacpp import default_model_path
from ingate.extras import require


class Vocab:
    def __init__(self, path: str):
        Llama = require("llama_cpp").Llama

        from ingate.engines.llamacpp import quiet_stderr

        with quiet_stderr():
            self._llm = Llama(model_path=path, vocab_only=True, verbose=False)
        atexit.register(self._llm.close)  # before llama_cpp's globals are torn down at exit
        self._lock = threading.Lock()  # llama.cpp's tokenizer is shared by the worker threads
        n = self._llm.n_vocab()
        self.token_bytes = [self._llm.detokenize([t]) for t in range(n)]
        self._folded = [b.strip().lower() for b in self.token_bytes]
        template = self._llm.metadata.get("tokenizer.chat_template")
        self._formatter = None
        if template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            piece = self._llm.detokenize
            self._formatter = Jinja2ChatFormatter(
                template, eos_token=piece([self._llm.token_eos()], special=True).decode("utf-8", "replace"),
                bos_token=piece([self._llm.token_bos()], special=True).decode("utf-8", "replace"))

    def steering_tokens(self, matched: bytes, limit: int) -> list[int]:
        """Tokens to bias against so that a continuation does not write `matched` again: those
        that begin it (their text, case and surrounding space aside, a prefix of it at least 3 bytes
        long, or the whole of it) and the tokens this tokenizer writes it with (as a word of its own
        too), but never a token of under 3 bytes: that would bar common text everywhere. Longest
        first, at most `limit`. The bias steers; hold-back still decides."""
        m = matched.strip().lower()
        if not m:
            return []
        need = min(len(m), 3)
        hits = {t for t, b in enumerate(self._folded) if len(b) >= need and (m.startswith(b) or b.startswith(m))}
        with self._lock:
            for form in (matched.strip(), b" " + matched.strip()):
                hits.update(t for t in self._llm.tokenize(form, add_bos=False, special=False)
                            if len(self._folded[t]) >= 3)
        return sorted(hits, key=lambda t: (-len(self._folded[t]), t))[:limit]

    @property
    def has_template(self) -> bool:
        return self._formatter is not None

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt text the upstream's chat endpoint would build, ready for the reply."""
        if self._formatter is None:
            raise ValueError("the tokenizer has no chat template")
        with self._lock:
            return self._formatter(messages=messages).prompt  # type: ignore[arg-type]


@cache
def load_vocab(tokenizer: str) -> Vocab:
    """`embedded` (the embedded default model's vocabulary) or a GGUF path; loaded once per process."""
    return Vocab(str(default_model_path()) if tokenizer == "embedded" else tokenizer)
