"""Values the context holds, in any grouping: the digits a pattern rule covers, however they are written.

A pattern reads a value whole: a card inside a longer run of digits, or regrouped ("853-371694"),
or with a letter pushed into it, is not a card to it. Told to copy a value it may not write, a
model steered by a mask writes such near misses, digits and all. So a pattern rule also governs
the values its patterns find in the request (every message the model is given), with this
property:

    no run of MIN_RUN (7) or more consecutive digits of such a value is released, whatever
    separates them: up to GAP (3) bytes that are not digits and not a line break between two
    digits (spaces, dashes, dots, brackets, letters), and whatever digits are glued around them.

It is one more byte automaton (the union of the value's 7-digit windows, each digit followed by
[^0-9\\n]{0,3}), stepped, held back, masked and rolled back like every other detector, with the
rule's own action: prevent masks the token that would complete a run, redact replaces the run
with the pattern's placeholder, stop ends the stream before it. Ordinary numbers (an order id, a
timestamp) are not touched unless they repeat 7 digits of a value the request holds.
"""

from __future__ import annotations

import functools

from ingate.gate.automaton import compile_regexes
from ingate.gate.detector import PatternDetector

MIN_RUN = 7
GAP = 3
_SEP = r"[^0-9\n]{0," + str(GAP) + "}"
REGROUPED = " (its digits, regrouped)"  # a scattered match's label: the pattern's name, then this


def base_label(label: str) -> str:
    """The pattern a label names, for a scattered match too ("phone (its digits, regrouped)" -> "phone")."""
    return label.removesuffix(REGROUPED)


def regrouped(label: str) -> bool:
    return label.endswith(REGROUPED)


def values(detector: PatternDetector, texts: list[str]) -> dict[int, set[str]]:
    """label index -> the digit strings (MIN_RUN digits or more) of what `detector` matches in `texts`."""
    out: dict[int, set[str]] = {}
    for text in texts:
        for label, digits in _found(detector, text):
            out.setdefault(label, set()).add(digits)
    return out


_FOUND: dict[tuple[int, str], list[tuple[int, str]]] = {}  # (detector, text) -> values: system prompts repeat
_FOUND_MAX = 4096


def _found(detector: PatternDetector, text: str) -> list[tuple[int, str]]:
    key = (id(detector), text)
    hit = _FOUND.get(key)
    if hit is not None:
        return hit
    data = text.encode("utf-8", "surrogatepass")
    out = []
    if sum(48 <= c <= 57 for c in data) >= MIN_RUN:  # no value without digits: most texts end here
        for start, end, labels in detector.matches(data):
            digits = bytes(c for c in data[start:end] if 48 <= c <= 57).decode()
            if len(digits) >= MIN_RUN:
                out.append((min(labels), digits))
    if len(_FOUND) >= _FOUND_MAX:
        _FOUND.clear()
    _FOUND[key] = out
    return out


@functools.lru_cache(maxsize=512)
def _compiled(regexes: tuple[str, ...]):
    """The values' automaton (a request repeating a system prompt's values compiles it once)."""
    return compile_regexes(list(regexes))


def windows(digits: str) -> set[str]:
    return {digits[i:i + MIN_RUN] for i in range(len(digits) - MIN_RUN + 1)}


def scatter_detector(detector: PatternDetector, texts: list[str]) -> PatternDetector | None:
    """A detector of the context's values in any grouping, for the rule `detector` belongs to (None
    when the context holds none of its values with MIN_RUN digits)."""
    found = values(detector, texts)
    if not found:
        return None
    labels = sorted(found)
    grams = [sorted(set().union(*(windows(v) for v in found[i]))) for i in labels]
    dfa = _compiled(tuple("|".join(_SEP.join(g) for g in gs) for gs in grams))
    return PatternDetector(detector.rule_id, detector.action, dfa,
                           [detector.labels[i] + REGROUPED for i in labels],
                           [detector.placeholders[i] for i in labels], kind="scattered")
