"""Phrase normalization on a byte stream: each code point folded on its own, with offsets.

A phrase rule reads the output through a `Fold`: per code point NFKD, case folding, look-alike
letters to their skeleton (`confusables.py`), combining marks dropped, invisible characters
dropped, and, with separators ignored, everything that is not a letter or digit dropped. The
phrase is folded by the same function, so 'ACME', 'Ａｃｍｅ', 'Аcmе' (Cyrillic) and 'a.c.m.e'
are one phrase, 'ß' matches 'ss' and 'é' matches 'e' + U+0301 and 'e'. Folding the stream
(rather than expanding every phrase character into all of its variants) keeps a 1,000-phrase
automaton at thousands of states instead of hundreds of thousands.

Each folded byte remembers the raw byte range of the character it came from, so matches,
hold-back and rollback still speak in raw offsets. A token may end inside a multi-byte
character: those bytes wait as `pending` until the character is complete.

Whole-word matching needs to see word edges: under `whole_word` every character that is not
part of a word (not a letter, digit or mark; invisible characters are no edge) is surrounded by
`MARK`, a zero-width piece at its start and at its end, and the stream starts with one. A phrase
then begins with MARK and ends with MARK, so "decided with one character of look-ahead" is a
byte of the automaton like any other; `MARK` at the end of the text comes from the gate.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

INVALID = b"\xff"  # never valid UTF-8, so never part of a phrase: what a stray byte becomes
MARK = "\x01"  # a word edge (whole_word only); a control character, so no folded text holds one
MARK_B = MARK.encode()

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
    as UTS #39 takes it (on NFD, so 'I' looks like 'l', Cyrillic 'В' like 'B' and the lunate
    sigma 'ϲ' like 'c' before NFKD makes it a sigma): a character can read two ways.
    """
    nfkd = unicodedata.normalize("NFKD", ch)

    def cf(t: str) -> str:
        return unicodedata.normalize("NFKD", t.casefold() if fold.casefold else t)

    if not fold.confusables:
        return (cf(nfkd),)
    from ingate.gate.confusables import skeleton

    first = cf(skeleton(cf(nfkd)))
    second = cf(skeleton(cf(skeleton(unicodedata.normalize("NFD", ch)))))
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


_AMBIGUOUS: dict[tuple[str, ...], str] = {}  # the readings of a two-way character -> its private code point
_READS: dict[str, tuple[str, ...]] = {}  # and back


def _ambiguous(bodies: tuple[str, ...]) -> str:
    c = _AMBIGUOUS.get(bodies)
    if c is None:
        c = _AMBIGUOUS[bodies] = chr(0xF0000 + len(_AMBIGUOUS))  # plane 15: private use, never in text we fold
        _READS[c] = bodies
    return c


@lru_cache(maxsize=262144)
def fold_char(ch: str, fold: Fold) -> tuple[int, str]:
    """(WORD | SEP | NONE, the folded text) of one code point; whitespace folds to one space.

    A character that reads two ways folds to a private code point standing for both; a phrase
    character then matches it when one of its readings is the phrase character's (`phrase_char`).
    """
    if invisible(ch):
        return NONE, ""
    if fold.leet and ch in LEET:
        return WORD, ch
    if ord(ch) >= 0xF0000:  # private use planes: kept apart from the code points folding stands for
        return SEP, "" if fold.separators else "\ufffd"
    rs = [_filter(r, fold) for r in _readings(ch, fold)]
    bodies = tuple(sorted({b for _, b in rs}))
    if len(bodies) == 1:
        return rs[0]
    return (WORD if any(k == WORD for k, _ in rs) else SEP), _ambiguous(bodies)


@lru_cache(maxsize=2)
def _two_way_chars(casefold: bool) -> tuple[str, ...]:
    """Every code point that reads two ways (folded first, or as its look-alike first)."""
    probe = Fold(casefold=casefold)
    out = []
    for cp in range(0x110000):
        ch = chr(cp)
        if 0xD800 <= cp < 0xE000 or (ch.casefold() == ch and unicodedata.normalize("NFKD", ch) == ch):
            continue  # only a character that case folding or NFKD changes can read two ways
        if len(_readings(ch, probe)) > 1:
            out.append(ch)
    return tuple(out)


@lru_cache(maxsize=64)
def _two_way(fold: Fold) -> dict[str, list[str]]:
    """reading -> the private code points of the characters that can also read that way."""
    out: dict[str, list[str]] = {}
    if not fold.confusables:
        return out
    for ch in _two_way_chars(fold.casefold):
        body = fold_char(ch, fold)[1]
        if len(body) == 1 and ord(body) >= 0xF0000:
            for r in _READS[body]:
                lst = out.setdefault(r, [])
                if body not in lst:
                    lst.append(body)
    return out


def phrase_char(ch: str, fold: Fold) -> tuple[int, list[str]]:
    """(WORD | SEP | NONE, alternatives): what one phrase character matches in the folded stream."""
    if invisible(ch):
        return NONE, []
    if fold.leet and ch in LEET:
        return WORD, [ch]
    kind, body = _filter(_readings(ch, fold)[0], fold)
    alts = [body]
    if fold.leet and len(body) == 1:
        alts += [fold_char(k, fold)[1] for k, v in LEET.items() if body in v]
    if kind == WORD:  # a separator matches as written (whitespace as a run)
        alts += _two_way(fold).get(body, [])
    return kind, list(dict.fromkeys(a for a in alts if a))


@lru_cache(maxsize=262144)
def _char_pieces(ch: str, fold: Fold) -> tuple[bytes, bytes, bytes]:
    """(before, body, after): MARK around an edge character under whole_word, else only the body."""
    kind, body = fold_char(ch, fold)
    edge = MARK_B if fold.whole_word and kind == SEP else b""
    return edge, body.encode("utf-8"), edge


@lru_cache(maxsize=64)
def _special(fold: Fold) -> tuple[list[tuple[bytes, bytes, bytes]], tuple[bytes, bytes, bytes]]:
    """The ASCII table and what a stray byte becomes, under one fold."""
    table = [_char_pieces(chr(b), fold) for b in range(128)]
    edge = MARK_B if fold.whole_word else b""
    invalid = (edge, b"" if fold.separators else INVALID, edge)
    return table, invalid


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


Piece = tuple[bytes, int, int]  # folded bytes, raw start, raw end (start == end: a zero-width MARK)


def feed(pending: bytes, data: bytes, pos: int, fold: Fold) -> tuple[bytes, list[Piece]]:
    """Fold `data` (at raw offset `pos`) after `pending` bytes of an unfinished character.

    Returns the new pending bytes and the non-empty pieces of every completed character.
    """
    ascii_, invalid = _special(fold)
    pieces: list[Piece] = []
    buf = pending + data
    start = pos - len(pending)
    i, n = 0, len(buf)

    def add(p: tuple[bytes, bytes, bytes], s: int, e: int) -> None:
        pre, body, post = p
        if pre:
            pieces.append((pre, s, s))
        if body:
            pieces.append((body, s, e))
        if post:
            pieces.append((post, e, e))

    while i < n:
        b = buf[i]
        if b < 0x80:
            p = ascii_[b]
            if not p[0] and p[1]:  # the common case: one byte, no edge
                pieces.append((p[1], start + i, start + i + 1))
            else:
                add(p, start + i, start + i + 1)
            i += 1
            continue
        k = _seq_len(b)
        if k == 0:
            add(invalid, start + i, start + i + 1)
            i += 1
            continue
        if i + k > n and all(0x80 <= c < 0xC0 for c in buf[i + 1:]):
            return bytes(buf[i:]), pieces  # the character continues in the next token
        try:
            ch = buf[i:i + k].decode("utf-8")
        except UnicodeDecodeError:
            add(invalid, start + i, start + i + 1)
            i += 1
            continue
        add(_char_pieces(ch, fold), start + i, start + i + k)
        i += k
    return b"", pieces


def fold_text(text: str, fold: Fold) -> str:
    """A whole string folded as the stream is (MARKs included), for checkers and tests."""
    return b"".join(p[0] for p in feed(b"", text.encode("utf-8"), 0, fold)[1]).decode("utf-8", "replace")


def normalize_token(data: bytes, fold: Fold) -> bytes:
    """A vocabulary token's folded bytes, as if it began at a character boundary.

    A trailing unfinished character is dropped: no match can complete inside it.
    """
    _, pieces = feed(b"", data, 0, fold)
    return b"".join(p[0] for p in pieces)
