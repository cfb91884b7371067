"""Look-alike letters folded to one skeleton, after Unicode's confusables data (UTS #39).

The data is Unicode's `confusables.txt` as the `confusable-homoglyphs` package ships it (MIT;
the data itself under the Unicode License, see docs/policies.md, "Phrase matching"). That package keeps each
line `source -> prototype` as an edge both ways, so the prototype of a class is recovered as the
centre of its star: the character most others point to. Where a class is a single pair, either
character may be the centre; the ASCII one (then the lower code point) is taken. Matching only
needs every member of a class to fold to the same string, which holds whichever is chosen.

A source whose prototype is several characters keeps it (`m` -> `rn`, `ﬀ` -> `ff`).
Only letters, digits and symbols that look like one fold (see the end of `skeleton_map`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

_MARKS = str.maketrans("", "", "\u200e\u200f")  # the data wraps right-to-left characters in LRM/RLM


@lru_cache(maxsize=1)
def skeleton_map() -> dict[str, str]:
    """code point -> its prototype, for every code point that has a different one."""
    try:
        raw = resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text(encoding="utf-8")
    except ModuleNotFoundError as e:  # pragma: no cover - a dependency of ingate
        raise RuntimeError("confusables: fold needs the package confusable-homoglyphs; pip install ingate "
                           "again, or set confusables: exact on the rule") from e
    data: dict[str, list[dict]] = json.loads(raw)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    degree: dict[str, int] = {}
    out: dict[str, str] = {}
    for key, entries in data.items():
        k = key.translate(_MARKS)
        for entry in entries:
            t = entry["c"].translate(_MARKS)
            if not k or not t or k == t:
                continue
            if len(k) == 1 and len(t) > 1:
                out[k] = t  # a single source whose prototype is a sequence
            elif len(k) == 1 and len(t) == 1:
                degree[k] = degree.get(k, 0) + 1
                ra, rb = find(k), find(t)
                if ra != rb:
                    parent[ra] = rb
    members: dict[str, list[str]] = {}
    for c in degree:
        members.setdefault(find(c), []).append(c)
    for group in members.values():
        centre = max(group, key=lambda c: (degree[c], c.isascii(), -ord(c)))
        for c in group:
            if c != centre and c not in out:
                out[c] = centre
    # Letters and digits fold, and so does a symbol that looks like one ('|' -> 'l'); a symbol
    # whose prototype is more symbols ('%' -> 'º/₀') is punctuation to a reader, and stays.
    return {c: t for c, t in out.items() if c.isalnum() or t.isalnum()}


def skeleton(text: str) -> str:
    m = skeleton_map()
    return "".join(m.get(c, c) for c in text)
