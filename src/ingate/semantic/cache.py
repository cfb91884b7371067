"""On-disk cache of concept embeddings, keyed by content hash and encoder.

A restart, or a second server on the same machine, reads the vectors instead of re-embedding
thousands of examples. Entries are written atomically (temp file, then rename), so a crash never
leaves a half-written array behind; a corrupt or unreadable entry is simply recomputed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence

import numpy as np

from ingate.paths import cache_dir


def key(encoder: str, version: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(f"{encoder}\0{version}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def cached_embeddings(encoder: str, version: str, dim: int, texts: Sequence[str],
                      compute: Callable[[Sequence[str]], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(embeddings, hit). Computes and stores them when the cache has no valid entry."""
    d = cache_dir()
    path = d / "embeddings" / f"{key(encoder, version, texts)}.npy" if d is not None else None
    if path is not None and path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (len(texts), dim) and arr.dtype == np.float32:
                return arr, True
        except (OSError, ValueError):
            pass  # unreadable: recompute and overwrite
    arr = np.ascontiguousarray(compute(texts), dtype=np.float32)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache costs a re-embed next start, nothing else
    return arr, False
