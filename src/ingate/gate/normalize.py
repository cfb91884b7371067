"""Phrase normalization on a byte stream: per code point NFKC (and case folding), with offsets.

Phrases are matched on normalized text, so 'ACME', 'Ａｃｍｅ' and 'acme' are one phrase, 'ß'
matches 'ss' and 'ﬁ' matches 'fi'. Normalizing the stream (rather than expanding every phrase
character into all of its Unicode variants) keeps a 1,000-phrase automaton at about 9,000
states instead of 200,000.

Each normalized byte remembers the raw byte range of the character it came from, so matches,
hold-back and rollback still speak in raw offsets. A token may end inside a multi-byte
character: those bytes wait as `pending` until the character is complete.

Not normalized (yet): homoglyphs across scripts (Cyrillic 'а' for Latin 'a'), zero-width and
other invisible characters, combining sequences (per code point, 'e' + U+0301 stays two).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

INVALID = b"\xff"  # never valid UTF-8, so never part of a phrase: what a stray byte becomes


@lru_cache(maxsize=65536)
def norm_char(ch: str, casefold: bool) -> bytes:
    """The normalized bytes of one code point; any whitespace becomes one space."""
    n = unicodedata.normalize("NFKC", ch)
    if casefold:
        n = unicodedata.normalize("NFKC", n.casefold())
    return "".join(" " if c.isspace() else c for c in n).encode("utf-8")


def norm_text(text: str, casefold: bool) -> str:
    """A whole string normalized the same way, with whitespace runs collapsed and ends stripped."""
    out = b"".join(norm_char(c, casefold) for c in text).decode("utf-8")
    return " ".join(w for w in out.split(" ") if w)


def _ascii_table(casefold: bool) -> list[bytes]:
    return [norm_char(chr(b), casefold) for b in range(128)]


_ASCII = {True: _ascii_table(True), False: _ascii_table(False)}


def _seq_len(lead: int) -> int:
    if lead < 0xC2:
        return 0  # continuation byte or overlong lead: invalid as a start
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    if lead < 0xF5:
        return 4
    return 0


Piece = tuple[bytes, int, int]  # normalized bytes, raw start, raw end


def feed(pending: bytes, data: bytes, pos: int, casefold: bool) -> tuple[bytes, list[Piece]]:
    """Normalize `data` (at raw offset `pos`) after `pending` bytes of an unfinished character.

    Returns the new pending bytes and one piece per completed character.
    """
    ascii_ = _ASCII[casefold]
    pieces: list[Piece] = []
    buf = pending + data
    start = pos - len(pending)
    i, n = 0, len(buf)
    while i < n:
        b = buf[i]
        if b < 0x80:
            pieces.append((ascii_[b], start + i, start + i + 1))
            i += 1
            continue
        k = _seq_len(b)
        if k == 0:
            pieces.append((INVALID, start + i, start + i + 1))
            i += 1
            continue
        if i + k > n and all(0x80 <= c < 0xC0 for c in buf[i + 1:]):
            return bytes(buf[i:]), pieces  # the character continues in the next token
        try:
            ch = buf[i:i + k].decode("utf-8")
        except UnicodeDecodeError:
            pieces.append((INVALID, start + i, start + i + 1))
            i += 1
            continue
        pieces.append((norm_char(ch, casefold), start + i, start + i + k))
        i += k
    return b"", pieces


def normalize_token(data: bytes, casefold: bool) -> bytes:
    """A vocabulary token's normalized bytes, as if it began at a character boundary.

    A trailing unfinished character is dropped: no match can complete inside it.
    """
    _, pieces = feed(b"", data, 0, casefold)
    return b"".join(p[0] for p in pieces)
