"""Phrase detection on normalized text, against an oracle written from the definition.

Definition (with confusables and accents left exact; tests/test_spelling.py covers those):
a text contains a phrase iff, after mapping each code point through NFKC(casefold(NFKC(c)))
(NFKC alone when case-sensitive), dropping invisible characters and collapsing whitespace runs
to one space, it contains the phrase normalized the same way.
"""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingate.gate.detector import compile_phrase_detector
from ingate.gate.normalize import Fold
from ingate.gate.regex import PatternError


def _fold(case_sensitive: bool) -> Fold:
    return Fold(casefold=not case_sensitive, confusables=False, accents=False)

PHRASES = ["credit card", "ﬁnance", "Straße", "Ｐａｓｓ word", "naïve", " top   secret ", "İstanbul", "fish"]
SPACES = [" ", "\t", "\n", "  ", "\u3000", "\xa0", " \n\t", "\u2003"]


def _canon(text: str, case_sensitive: bool) -> str:
    def norm(c: str) -> str:
        if unicodedata.category(c) == "Cf":
            return ""
        n = unicodedata.normalize("NFKC", c)
        return n if case_sensitive else unicodedata.normalize("NFKC", n.casefold())
    out: list[str] = []
    for c in "".join(norm(c) for c in text):
        if c.isspace():
            if not out or out[-1] != " ":
                out.append(" ")
        else:
            out.append(c)
    return "".join(out)


def _oracle(text: str, case_sensitive: bool) -> set[int]:
    t = _canon(text, case_sensitive)
    return {i for i, p in enumerate(PHRASES) if _canon(p, case_sensitive).strip(" ") in t}


def _variants(c: str) -> list[str]:
    out = [c, c.upper(), c.lower()]
    if c.isascii() and c.isalnum():
        out.append(chr(ord(c) + 0xFEE0))  # fullwidth
    if c.isascii() and c.isalpha():
        out.append(chr(0x1D41A + ord(c.lower()) - ord("a")))  # mathematical bold small
    if c.isspace():
        out.extend(SPACES)
    return out


@st.composite
def texts(draw) -> str:
    text = draw(st.sampled_from(PHRASES))
    for a, b in [("fi", "ﬁ"), ("ss", "ß"), ("ß", "ss"), ("ß", "ẞ")]:
        if a in text and draw(st.booleans()):
            text = text.replace(a, b)
    chars = [draw(st.sampled_from(_variants(c))) for c in text]
    if chars and draw(st.booleans()):  # damage it: a near miss
        del chars[draw(st.integers(0, len(chars) - 1))]
    pre = draw(st.text(alphabet="ab .\t", max_size=3))
    post = draw(st.text(alphabet="ab .\t", max_size=3))
    return pre + "".join(chars) + post


@pytest.mark.parametrize("case_sensitive", [False, True])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_detection_agrees_with_the_definition(case_sensitive, data):
    text = data.draw(st.one_of(texts(), st.text(max_size=12)))
    det = compile_phrase_detector("r", "prevent", PHRASES, _fold(case_sensitive), "[X]")
    _, matches = det.advance(det.initial(), text.encode(), 0)
    found = {label for _, _, labels in matches for label in labels}
    assert found == _oracle(text, case_sensitive), text


def test_examples_and_offsets():
    det = compile_phrase_detector("r", "redact", PHRASES, _fold(False), "[X]")
    text = "my CREDIT\t\n  card and ＦＩＮＡＮＣＥ and STRASSE"
    _, ms = det.advance(det.initial(), text.encode(), 0)
    spans = sorted({(text.encode()[s:e].decode(), min(labels)) for s, e, labels in ms})
    assert spans == [("CREDIT\t\n  card", 0), ("STRASSE", 2), ("ＦＩＮＡＮＣＥ", 1)]


def test_phrase_empty_after_normalization_is_refused():
    with pytest.raises(PatternError, match="empty"):
        compile_phrase_detector("r", "stop", ["ok", " \u3000 "], _fold(False), "[X]")
