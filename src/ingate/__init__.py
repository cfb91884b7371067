"""ingate: an admissibility gate inside the token generation loop of any LLM.

The library's front door. A policy is loaded and compiled once; a `Gate` applies it to one stream
and any loop can drive it (a mask before sampling, a verdict per token or text delta, the text
that may be released now); three drivers ship with it:

    from ingate import load_policy, compile_policy, Gate, Mode

    gate = Gate(compile_policy(load_policy("default")), None, mode=Mode.TEXT)
    for delta in stream_of_text:                 # e.g. an OpenAI client's stream, or your own loop
        verdict = gate.feed(delta)               # ADMIT, ROLLBACK (withdraw), STOP, END
        print(gate.release(), end="")            # only the provably admissible prefix
    print(gate.release(final=True))

Names are imported on first use, so `import ingate` stays light (the vLLM plugin imports it
inside every engine process).
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

try:
    __version__ = metadata.version("ingate")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_EXPORTS = {
    # policies
    "Policy": "ingate.policy", "PolicyError": "ingate.policy", "load_policy": "ingate.policy",
    "parse_policy": "ingate.policy", "register_kind": "ingate.policy", "RuleKind": "ingate.policy",
    "compile_policy": "ingate.gate.compile", "CompiledPolicy": "ingate.gate.compile",
    # the gate
    "Gate": "ingate.gate.gate", "GateOptions": "ingate.gate.gate", "Mode": "ingate.gate.gate",
    "Verdict": "ingate.gate.gate", "Decision": "ingate.gate.decision", "TokenTable": "ingate.gate.masks",
    # the drivers
    "generate": "ingate.drivers.full", "govern_text": "ingate.drivers.text",
    "generate_mask_first": "ingate.drivers.mask_first", "Result": "ingate.drivers.base",
    "Finish": "ingate.drivers.base", "GenerationParams": "ingate.drivers.base",
    "GenerationFailed": "ingate.drivers.base", "SamplingParams": "ingate.sampling",
    # cores and the pipeline
    "Core": "ingate.core", "Request": "ingate.core", "govern": "ingate.core", "Runtime": "ingate.runtime",
    "open_core": "ingate.compose", "UpstreamCore": "ingate.upstream.core", "UpstreamClient": "ingate.upstream.client",
}
_RENAMED = {"UpstreamClient": "Client"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ingate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
