"""Engines: adapters from the governed loop to a model. The loop sees only `Engine`."""

from __future__ import annotations

from pathlib import Path

from ingate.engines.base import ContextFull, Engine, EngineCrashed, EngineError

__all__ = ["ContextFull", "Engine", "EngineCrashed", "EngineError", "load_engine"]


def load_engine(model: str | Path | None = None, *, layout: str | None = None, n_ctx: int = 4096) -> Engine:
    """The local llama.cpp engine in this process, with a weight layout that is safe on this CPU.
    `layout`: one already chosen; None chooses (INGATE_LLAMA_REPACK, else the cached probe).
    INGATE_THREADS fixes the thread count; by default it is tuned while decoding."""
    from ingate.engines import layout as layouts
    from ingate.engines.llamacpp import LlamaCppEngine, resolve_model_path
    from ingate.engines.threads import thread_setting

    path = resolve_model_path(model)
    threads = thread_setting()
    reason = f"chosen by the caller: {layout}"
    if layout is None:
        choice = layouts.choose(path)
        layout, reason = choice.layout, choice.reason
    engine = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=threads, layout=layout)
    engine.layout_reason = reason
    return engine
