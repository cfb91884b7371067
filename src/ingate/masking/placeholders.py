"""Placeholders: the typed stand-ins a model sees instead of a value, and how its copies are read back.

A placeholder is `[TYPE_N]`: the value's type in capitals (EMAIL, PHONE, CREDIT_CARD, ...) and its
number within the vault, from 1. Brackets and an upper-case type are what instruct models copy
intact most often (bench/mask.py measures it), and the type tells the model what stands there.

A model's copy may be mangled: `[EMAIL1]`, `[Email_1]`, `[ email 1 ]`. `PLACEHOLDER_LIKE` reads
any of them: a bracket, a type of letters with `_`, `-` or space between words, an optional
number, a bracket. `partial_at` finds where a text ends inside what could still become one: the
only text a restorer holds back.
"""

from __future__ import annotations

import re

MAX_CHARS = 48  # a placeholder is never longer: a held "[..." that grows past it is not one
PLACEHOLDER_LIKE = re.compile(r"\[ ?([A-Za-z]+(?:[ _-][A-Za-z]+)*)(?:[ _-]?([0-9]{1,4}))? ?\]")
_PARTIAL = re.compile(r"\[[A-Za-z0-9 _-]*\Z")
LITERAL = "LITERAL"  # the type of a placeholder-like string the client wrote itself (it is masked too)


def type_name(label: str) -> str:
    """`email` -> EMAIL, `us_ssn`'s [SSN] placeholder -> SSN, a rule id `code-names` -> CODE_NAMES."""
    t = re.sub(r"[^A-Za-z]+", "_", label.strip("[]")).strip("_").upper()
    return t or "VALUE"


def placeholder(kind: str, n: int) -> str:
    return f"[{kind}_{n}]"


def norm_type(raw: str) -> str:
    """The type a copy names, however it spelled it: `Credit card` -> CREDIT_CARD."""
    return re.sub(r"[ _-]+", "_", raw).upper()


def partial_at(text: str) -> int | None:
    """Where `text` ends inside what could still become a placeholder (its `[`), or None."""
    i = text.rfind("[")
    if i < 0 or len(text) - i >= MAX_CHARS:
        return None
    return i if _PARTIAL.match(text, i) else None
