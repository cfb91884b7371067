"""Engines: adapters from the governed loop to a model. The loop sees only `Engine`."""

from __future__ import annotations

from pathlib import Path

from ingate.engines.base import BATCH, FULL_LOGITS, ROLLBACK, ContextFull, Engine, EngineCrashed, EngineError

__all__ = ["BATCH", "FULL_LOGITS", "ROLLBACK", "ContextFull", "Engine", "EngineCrashed", "EngineError",
           "SCHEMES", "load_engine", "parse_spec"]

# engine spec schemes: "llama.cpp:PATH". A remote model is not an engine (no logits): it is served
# through ingate.upstream (serve --upstream URL, or a models file)
SCHEMES = ("llama.cpp",)


def parse_spec(spec: str | Path | None) -> tuple[str, str | None]:
    """(scheme, target) of an engine spec. A bare path (or None: the embedded default model) is
    llama.cpp; an unknown scheme is an error that lists the known ones."""
    if spec is None:
        return "llama.cpp", None
    text = str(spec)
    scheme, sep, rest = text.partition(":")
    if not sep or "/" in scheme or "\\" in scheme or len(scheme) == 1:  # a path (C:\ on Windows included)
        return "llama.cpp", text
    if scheme not in SCHEMES:
        raise EngineError(f"unknown engine {scheme!r} in {text!r}; use one of: " +
                          ", ".join(f"{s}:PATH" for s in SCHEMES) + " (or a bare path to a GGUF file)")
    return scheme, rest or None


def load_engine(model: str | Path | None = None, *, layout: str | None = None, n_ctx: int = 4096,
                n_seq: int = 1, prefix_cache_bytes: int = 0) -> Engine:
    """The engine a spec names (`llama.cpp:PATH`, a bare GGUF path, or None for the embedded default).
    The local llama.cpp engine runs in this process, with a weight layout that is safe on this CPU.
    `layout`: one already chosen; None chooses (INGATE_LLAMA_REPACK, else the cached probe).
    `n_seq`: sequences in the context (ingate.batch runs all but the first); `n_ctx`: tokens each.
    INGATE_THREADS fixes the thread count; by default it is tuned while decoding."""
    from ingate.engines import layout as layouts
    from ingate.engines.llamacpp import LlamaCppEngine, resolve_model_path
    from ingate.engines.threads import thread_setting

    _, target = parse_spec(model)
    path = resolve_model_path(target)
    threads = thread_setting()
    reason = f"chosen by the caller: {layout}"
    if layout is None:
        choice = layouts.choose(path)
        layout, reason = choice.layout, choice.reason
    engine = LlamaCppEngine(path, n_ctx=n_ctx, n_threads=threads, layout=layout, n_seq=n_seq,
                            prefix_cache_bytes=prefix_cache_bytes)
    engine.layout_reason = reason
    return engine
