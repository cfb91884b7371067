"""Phrase normalization on a byte stream: each code point folded on its own, with offsets.

A phrase rule reads the output through a `Fold`: per code point NFKD (NFKC when accents are
exact), case folding, look-alike
letters to their skeleton (`confusables.py`), combining marks dropped, invisible characters
dropped, and, with separators ignored, everything that is not a letter or digit dropped. The
phrase is folded by the same function, so 'ACME', 'Ａｃｍｅ', 'Аcmе' (Cyrillic) and 'a.c.m.e'
are one phrase, 'ß' matches 'ss' and 'é' matches 'e' + U+0301 and 'e'. Folding the stream
(rather than expanding every phrase character into all of its variants) keeps a 1,000-phrase
automaton at thousands of states instead of hundreds of thousands.

Each folded byte remembers the raw byte range of the character it came from, so matches,
hold-back and rollback still speak in raw offsets. A token may end inside a multi-byte
character: those bytes wait as `pending` until the character is complete.

Whole-word matching needs to see word edges: every piece carries its character's kind (part
of a word, an edge, or neither: invisible characters and marks), and the detector decides edges
in code (`PhraseDetector`), so the automaton stays the plain phrase automaton.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

NormalForm = Literal["NFC", "NFD", "NFKC", "NFKD"]

INVALID = b"\xff"  # never valid UTF-8, so never part of a phrase: what a stray byte becomes

# Leetspeak, off by default (it can block real numbers): the stream keeps these symbols as word
# characters, and each phrase letter also matches the (folded) symbols that stand for it.
LEET = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"}

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15): characters that
# render as nothing. With format characters (Cf) they are dropped before matching.
_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
              (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
              (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
              (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))

WORD, SEP, NONE = 0, 1, 2  # what a character is to a word edge: part of a word, an edge, neither


@dataclass(frozen=True)
class Fold:
    """How a phrase rule reads text. Hashable: views of the vocabulary are cached per fold."""

    casefold: bool = True
    confusables: bool = True  # look-alike letters fold to one skeleton (UTS #39)
    accents: bool = True  # True: combining marks are ignored ('é' matches 'e')
    separators: bool = False  # True: only letters and digits count ('B-l-u-e' matches 'blue')
    leet: bool = False  # 0->o, 1->i/l, 3->e, 4->a, 5->s, 7->t, @->a, $->s
    whole_word: bool = False  # a match may not be flanked by letters or digits

    def describe(self) -> str:
        parts = [("case-insensitive" if self.casefold else "case-sensitive"),
                 "separators " + ("ignored" if self.separators else "exact"),
                 "confusables " + ("folded" if self.confusables else "exact"),
                 "accents " + ("ignored" if self.accents else "exact")]
        if self.leet:
            parts.append("leet folded")
        if self.whole_word:
            parts.append("whole words")
        return ", ".join(parts)


def invisible(ch: str) -> bool:
    cp = ord(ch)
    if unicodedata.category(ch) == "Cf":
        return True
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE)


def _word_char(c: str, fold: Fold) -> bool:
    return unicodedata.category(c)[0] in "LN" or (fold.leet and c in LEET)


def _readings(ch: str, fold: Fold) -> tuple[str, ...]:
    """The ways a reader may read one code point, before marks and separators are filtered.

    Compatibility and case folded first ('Ｉ' -> 'i'), and, with confusables, the look-alike first
    as UTS #39 takes it (on the canonical form, so 'I' looks like 'l', Cyrillic 'В' like 'B' and
    the lunate sigma 'ϲ' like 'c' before NFKD makes it a sigma): a character can read two ways.
    Accents ignored: decomposed (NFKD), so the marks can be dropped. Accents exact: composed
    (NFKC), so 'é' stays one character and never reads as 'e' followed by something.
    """
    compat: NormalForm = "NFKD" if fold.accents else "NFKC"
    canon: NormalForm = "NFD" if fold.accents else "NFC"

    def cf(t: str) -> str:
        return unicodedata.normalize(compat, t.casefold() if fold.casefold else t)

    if not fold.confusables:
        return (cf(unicodedata.normalize(compat, ch)),)
    from ingate.gate.confusables import skeleton

    first = cf(skeleton(cf(unicodedata.normalize(compat, ch))))
    second = cf(skeleton(cf(skeleton(unicodedata.normalize(canon, ch)))))
    return (first,) if second == first else (first, second)


def _filter(s: str, fold: Fold) -> tuple[int, str]:
    kind = NONE
    out = []
    for c in s:
        if invisible(c):
            continue
        if unicodedata.category(c)[0] == "M":
            if not fold.accents:
                out.append(c)
            continue
        if _word_char(c, fold):
            kind = WORD
            out.append(c)
            continue
        kind = SEP if kind == NONE else kind
        if not fold.separators:
            out.append(" " if c.isspace() else c)
    return kind, "".join(out)


@lru_cache(maxsize=262144)
def fold_char(ch: str, fold: Fold) -> tuple[int, tuple[str, ...]]:
    """(WORD | SEP | NONE, its readings, folded); whitespace folds to one space.

    Nearly every character reads one way. One that reads two ('I': 'i' or 'l') has both, the
    case-folded reading first: detectors follow both (`PhraseDetector.advance`), and the phrase
    side stays a plain string, so the automata are as small as for plain text.
    """
    if invisible(ch):
        return NONE, ("",)
    if fold.leet and ch in LEET:
        return WORD, (ch,)
    rs = [_filter(r, fold) for r in _readings(ch, fold)]
    if len(rs) == 1 or rs[1][1] == rs[0][1]:
        return rs[0][0], (rs[0][1],)
    return (WORD if any(k == WORD for k, _ in rs) else rs[0][0]), (rs[0][1], rs[1][1])


def phrase_char(ch: str, fold: Fold) -> tuple[int, list[str]]:
    """(WORD | SEP | NONE, alternatives): what one phrase character matches in the folded stream.
    A phrase character reads its first way; under leet a letter also matches its digits and symbols."""
    kind, (body, *_) = fold_char(ch, fold)
    if kind == NONE:  # invisible, or a lone mark: nothing, unless accents are exact and it is kept
        return (WORD, [body]) if body else (NONE, [])
    alts = [body]
    if fold.leet and len(body) == 1 and ch not in LEET:
        alts += [fold_char(k, fold)[1][0] for k, v in LEET.items() if body in v]
    return kind, list(dict.fromkeys(a for a in alts if a))


Body = bytes | tuple[bytes, bytes]  # one reading, or two (`fold_char`)


@lru_cache(maxsize=262144)
def _char_piece(ch: str, fold: Fold) -> tuple[Body, int]:
    kind, rs = fold_char(ch, fold)
    if len(rs) == 1:
        return rs[0].encode("utf-8"), kind
    return (rs[0].encode("utf-8"), rs[1].encode("utf-8")), kind


@lru_cache(maxsize=64)
def _special(fold: Fold) -> tuple[list[tuple[Body, int]], tuple[Body, int]]:
    """The ASCII table and what a stray byte becomes (an edge), under one fold."""
    return [_char_piece(chr(b), fold) for b in range(128)], (b"" if fold.separators else INVALID, SEP)


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


Piece = tuple[Body, int, int, int]  # folded bytes, raw start, raw end, WORD | SEP | NONE


def first(body: Body) -> bytes:
    """A piece's first reading: what masks and search states follow (see PhraseDetector)."""
    return body if isinstance(body, bytes) else body[0]


def feed(pending: bytes, data: bytes, pos: int, fold: Fold, edges: bool = False) -> tuple[bytes, list[Piece]]:
    """Fold `data` (at raw offset `pos`) after `pending` bytes of an unfinished character.

    Returns the new pending bytes and one piece per completed character that folds to something
    (with `edges`, also per edge character that folds to nothing: whole words need to see them).
    """
    ascii_, invalid = _special(fold)
    if not pending and data.isascii():  # the common token: a table lookup per byte, in one comprehension
        return b"", [(body, pos + i, pos + i + 1, kind) for i, (body, kind) in enumerate(map(ascii_.__getitem__, data))
                     if body or (edges and kind == SEP)]
    pieces: list[Piece] = []
    buf = pending + data
    start = pos - len(pending)
    i, n = 0, len(buf)

    def emit(p: tuple[Body, int], s: int, e: int) -> None:
        if p[0] or (edges and p[1] == SEP):
            pieces.append((p[0], s, e, p[1]))

    while i < n:
        b = buf[i]
        if b < 0x80:
            emit(ascii_[b], start + i, start + i + 1)
            i += 1
            continue
        k = _seq_len(b)
        if k == 0:
            emit(invalid, start + i, start + i + 1)
            i += 1
            continue
        if i + k > n and all(0x80 <= c < 0xC0 for c in buf[i + 1:]):
            return bytes(buf[i:]), pieces  # the character continues in the next token
        try:
            ch = buf[i:i + k].decode("utf-8")
        except UnicodeDecodeError:
            emit(invalid, start + i, start + i + 1)
            i += 1
            continue
        emit(_char_piece(ch, fold), start + i, start + i + k)
        i += k
    return b"", pieces


def fold_text(text: str, fold: Fold) -> str:
    """A whole string folded as the stream is (first readings), for tests."""
    return b"".join(first(p[0]) for p in feed(b"", text.encode("utf-8"), 0, fold)[1]).decode("utf-8", "replace")


def normalize_token(data: bytes, fold: Fold) -> bytes:
    """A vocabulary token's folded bytes (first readings), as if it began at a character boundary.

    A trailing unfinished character is dropped: no match can complete inside it.
    """
    _, pieces = feed(b"", data, 0, fold)
    return b"".join(first(p[0]) for p in pieces)
