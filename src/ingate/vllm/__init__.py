"""ingate inside vLLM: a logits-processor plugin (`IngateLogitsProcessor`), the conversion of a GGUF
model to the weights vLLM loads (`convert`), and the batch masks both rest on (`rows`).

Importing this package needs vLLM (and torch) only for `IngateLogitsProcessor`; `rows`, `tokens`
and `convert` import without it."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # the plugin class is imported on demand: it needs vLLM
    if name == "IngateLogitsProcessor":
        from ingate.vllm.processor import IngateLogitsProcessor

        return IngateLogitsProcessor
    raise AttributeError(name)
