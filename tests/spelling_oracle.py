"""An oracle for phrase matching under a fold, written from the docs' definition, not from
the gate's automata: each character of a text has a set of readings; a phrase occurs where
some choice of readings spells the phrase's own reading (whitespace runs as one space).

Definition (docs/policies.md, "Phrase matching"): a character reads as NFKD (NFKC when accents are exact)
and case folded, and, with
confusables folded, as its UTS #39 prototype after that, and as the prototype of its NFD before
it (so 'I' reads as 'i' and as 'l'); a phrase character reads the first way. Invisible
characters read as nothing; marks read as nothing when accents are ignored; with separators
ignored, everything that is not a letter or digit reads as nothing.
Whole words: the nearest visible character on each side of the match is not a letter or digit.
"""

from __future__ import annotations

import unicodedata

from ingate.gate.confusables import skeleton

# Default_Ignorable_Code_Point (Unicode 15), as docs/policies.md names it
_DI = [(0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
       (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
       (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
       (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF)]


def hidden(c: str) -> bool:
    return unicodedata.category(c) == "Cf" or any(a <= ord(c) <= b for a, b in _DI)


def _keep(s: str, accents: bool, separators: bool) -> str:
    out = []
    for c in s:
        cat = unicodedata.category(c)
        if hidden(c) or (cat[0] == "M" and accents):
            continue
        if cat[0] in "LNM":
            out.append(c)
        elif not separators:
            out.append(" " if c.isspace() else c)
    return "".join(out)


def readings(c: str, *, casefold=True, confusables=True, accents=True, separators=False) -> set[str]:
    if hidden(c):
        return {""}
    compat, canon = ("NFKD", "NFD") if accents else ("NFKC", "NFC")

    def cf(s: str) -> str:
        return unicodedata.normalize(compat, s.casefold() if casefold else s)

    rs = {cf(unicodedata.normalize(compat, c))}
    if confusables:
        rs = {cf(skeleton(cf(unicodedata.normalize(compat, c)))),
              cf(skeleton(cf(skeleton(unicodedata.normalize(canon, c)))))}
    return {_keep(r, accents, separators) for r in rs}


def word_char(c: str, **fold) -> bool:
    return any(any(unicodedata.category(x)[0] in "LN" for x in r)
               for r in readings(c, **{**fold, "separators": False}))


def target(phrase: str, **fold) -> str:
    """The phrase's own reading: its first reading per character, whitespace runs as one space."""
    out = []
    for c in phrase:
        for x in _first(c, **fold):
            if x == " " and (not out or out[-1] == " "):
                continue
            out.append(x)
    return "".join(out).strip(" ")


def _first(c: str, *, casefold=True, confusables=True, accents=True, separators=False) -> str:
    if hidden(c):
        return ""
    compat = "NFKD" if accents else "NFKC"

    def cf(s: str) -> str:
        return unicodedata.normalize(compat, s.casefold() if casefold else s)

    base = cf(unicodedata.normalize(compat, c))
    return _keep(cf(skeleton(base)) if confusables else base, accents, separators)


def spans(text: str, phrases: list[str], whole_word: bool = False, **fold) -> list[tuple[int, int, int]]:
    """(start, end, phrase index) in characters: every span that spells a phrase, its first and
    last character contributing."""
    rs = [readings(c, **fold) for c in text]
    out = []
    for k, p in enumerate(phrases):
        t = target(p, **fold)
        if not t:
            continue
        for i in range(len(text)):
            if "" in rs[i] and len(rs[i]) == 1:
                continue
            cur = {0}
            for j in range(i, len(text)):
                nxt = set()
                for o in cur:
                    for r in rs[j]:
                        if r == "":
                            nxt.add(o)
                        elif r == " " and o > 0 and t[o - 1] == " ":
                            nxt.add(o)  # a whitespace run is one space
                            if t.startswith(r, o):
                                nxt.add(o + 1)
                        elif t.startswith(r, o):
                            nxt.add(o + len(r))
                cur = {o for o in nxt if o > 0 or j < i}
                if not cur:
                    break
                if len(t) in cur and rs[j] != {""} and (not whole_word or _edges(text, i, j + 1, fold)):
                    out.append((i, j + 1, k))
    return out


def _edges(text: str, i: int, j: int, fold: dict) -> bool:
    """Whole word: the nearest visible character before i and at or after j is no letter or digit."""
    def visible(c: str) -> bool:
        return not hidden(c) and unicodedata.category(c)[0] != "M"
    before = next((c for c in reversed(text[:i]) if visible(c)), None)
    after = next((c for c in text[j:] if visible(c)), None)
    return all(c is None or not word_char(c, **fold) for c in (before, after))
