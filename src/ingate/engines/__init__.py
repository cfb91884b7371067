"""Engines: adapters from the governed loop to a model. The loop sees only `Engine`."""

from ingate.engines.base import Engine, EngineError

__all__ = ["Engine", "EngineError"]
