"""Where ingate keeps files on this machine: one place for every module that needs a path.

  cache   $INGATE_CACHE_DIR, else $XDG_CACHE_HOME/ingate, else ~/.cache/ingate (embeddings, trained
          heads, the engine's layout probe); `INGATE_CACHE_DIR=off` disables it
  state   $XDG_STATE_HOME/ingate, else ~/.local/state/ingate (the default SQLite audit)
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """The cache folder, or None when `INGATE_CACHE_DIR` turns caching off."""
    raw = os.environ.get("INGATE_CACHE_DIR")
    if raw is not None:
        return None if raw.strip().lower() in ("", "off", "0", "none") else Path(raw)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ingate"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ingate"
