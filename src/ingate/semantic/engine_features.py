"""Features from the generating model itself: its last hidden layer, pooled over a text.

In ingate's own loop the llama.cpp engine keeps the hidden state of every position it decodes
anyway (`LlamaCppEngine.enable_hidden`: the logits are unchanged), and a token group's feature is
the mean of the states that predicted its tokens, scaled to unit length: no second model runs. To
train a head on the same features, this featurizer evaluates each labelled response after its
prompt (the chat template of one user turn, empty when the row has no prompt) through the same
GGUF and pools the same states. llama.cpp's public API gives the last layer's output only (no
intermediate layer), so that is the layer used.

It serves as an encoder (`ingate.encoders.ENGINE`) so that the cache, the heads and `calibrate`
use it like MiniLM; its `version` is the engine's feature id, which the loop's vectors carry, so
a head is only ever fed states of the model it was trained on. Where llama-cpp-python or the
model is missing, loading it raises EncoderUnavailable and a head asking for `features: engine`
falls back to the sentence encoder (`ingate check` says so).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ingate import encoders
from ingate.semantic.encoder import EncoderUnavailable, encoder_threads

N_CTX = 2048
MAX_RESPONSE_TOKENS = 384  # longer responses are cut: a group is at most 512 tokens, most are 4-32


def pool(states: np.ndarray) -> np.ndarray:
    """The mean of some hidden states, at unit length: the feature of the text they predicted."""
    v = np.asarray(states, dtype=np.float32).mean(axis=0)
    return v / max(float(np.linalg.norm(v)), 1e-12)


class EngineFeatures:
    name = encoders.ENGINE

    def __init__(self, model: str | Path | None = None) -> None:
        try:
            from ingate.engines.base import EngineError
            from ingate.engines.llamacpp import LlamaCppEngine
        except ImportError as e:
            raise EncoderUnavailable(f"engine features need llama-cpp-python ({e.name} is missing)") from None
        try:
            # only compile time and calibrate featurize text (the loop reads the engine's own states): every core
            self.engine = LlamaCppEngine(model, n_ctx=N_CTX, n_threads=max(encoder_threads(), os.cpu_count() or 1),
                                         layout="off")
        except (EngineError, ImportError) as e:
            raise EncoderUnavailable(f"engine features cannot load the model: {e}") from None
        self.version = self.engine.enable_hidden()
        self.dim = self.engine.n_embd
        self._lock = threading.Lock()

    def _one(self, prompt: str | None, text: str) -> np.ndarray:
        head = self.engine.chat_prompt([{"role": "user", "content": prompt or ""}])
        body = self.engine.tokenize(text)[:MAX_RESPONSE_TOKENS] or self.engine.tokenize(" ")
        head = head[-(N_CTX - len(body)):]
        return pool(self.engine.hidden_states(head + body, len(head)))

    def encode_pairs(self, prompts: Sequence[str | None], texts: Sequence[str]) -> np.ndarray:
        """Each text's feature as the model's answer to its prompt."""
        with self._lock:
            if not texts:
                return np.zeros((0, self.dim), np.float32)
            return np.stack([self._one(p, t) for p, t in zip(prompts, texts, strict=True)])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Each text as the answer to an empty user turn (what `calibrate` and a remote stream have)."""
        return self.encode_pairs([None] * len(texts), texts)
