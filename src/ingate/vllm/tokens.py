"""Each token's bytes from a Hugging Face tokenizer (the one vLLM loads), for the gate's automata.

Three vocabularies cover the models vLLM serves: byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM:
each character of a token stands for one byte), SentencePiece with byte fallback (Llama 2,
Mistral: "▁" is a space and "<0x0A>" a raw byte), and plain text pieces. Special tokens (end of
turn, role markers) print nothing: they get no bytes, as in llama.cpp's token table.
"""

from __future__ import annotations

import json
import re
from typing import Any

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in for each byte, inverted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


def vocabulary_kind(tokenizer: Any) -> str:
    """'byte_level', 'sentencepiece' or 'text', from the tokenizer's decoder."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.decoder is not None:
        dec = json.dumps(json.loads(backend.to_str()).get("decoder"))
        if '"ByteLevel"' in dec:
            return "byte_level"
        if "ByteFallback" in dec or "\u2581" in dec or "Metaspace" in dec:
            return "sentencepiece"
    if getattr(tokenizer, "sp_model", None) is not None:
        return "sentencepiece"
    return "text"


def token_bytes(tokenizer: Any, vocab_size: int | None = None) -> list[bytes]:
    """bytes per token id, padded with b"" to `vocab_size` (the model's logits may be wider)."""
    n = max(len(tokenizer), vocab_size or 0)
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_ids)
    added = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    kind = vocabulary_kind(tokenizer)
    bl = _byte_level_decoder() if kind == "byte_level" else None
    out: list[bytes] = []
    for i, p in enumerate(pieces):
        if p is None or i in special or i in added:
            out.append(b"")
        elif bl is not None:
            try:
                out.append(bytes(bl[c] for c in p))
            except KeyError:  # an added token written as plain text
                out.append(p.encode("utf-8"))
        elif kind == "sentencepiece":
            m = _BYTE_FALLBACK.match(p)
            out.append(bytes([int(m.group(1), 16)]) if m else p.replace("\u2581", " ").encode("utf-8"))
        else:
            out.append(p.encode("utf-8"))
    return out + [b""] * (n - len(out))
