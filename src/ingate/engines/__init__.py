"""Engines: adapters from the governed loop to a model. The loop sees only `Engine`."""

from __future__ import annotations

import os
from pathlib import Path

from ingate.engines.base import ContextFull, Engine, EngineCrashed, EngineError

__all__ = ["ContextFull", "Engine", "EngineCrashed", "EngineError", "isolated", "load_engine"]


def isolated() -> bool:
    """INGATE_ENGINE_PROCESS=0 runs llama.cpp inside the calling process (embedding, benchmarks);
    the default runs it in its own process, so that a native crash cannot take the caller down."""
    raw = os.environ.get("INGATE_ENGINE_PROCESS", "1").strip().lower()
    if raw not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise EngineError(f"INGATE_ENGINE_PROCESS={raw!r}: use 1 (own process, the default) or 0 (in process)")
    return raw in ("1", "true", "yes", "on")


def load_engine(model: str | Path | None = None, *, isolate: bool | None = None, n_ctx: int = 4096) -> Engine:
    """The local llama.cpp engine, with a weight layout that is safe on this CPU and, by default,
    in its own process. INGATE_LLAMA_REPACK and INGATE_THREADS override the automatic choices."""
    from ingate.engines import layout
    from ingate.engines.llamacpp import LlamaCppEngine, resolve_model_path
    from ingate.engines.threads import thread_setting

    path = resolve_model_path(model)
    threads = thread_setting()
    choice = layout.choose(path)
    if isolate if isolate is not None else isolated():
        from ingate.engines.process import EngineProcess

        return EngineProcess(path, layout=choice.layout, n_ctx=n_ctx, n_threads=threads, layout_reason=choice.reason)
    engine = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=threads, layout=choice.layout)
    engine.layout_reason = choice.reason
    return engine
