"""The phrase normalizer: chunking-independent, offset-exact, and what it folds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingate.gate.normalize import INVALID, feed, norm_text, normalize_token

TEXT = st.text(alphabet=st.sampled_from(list("aZ ß\tﬁＡｃé€😀\n.-\u0301")), max_size=30)


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.integers(0, 200), max_size=12))
def test_feeding_in_any_chunks_gives_the_same_pieces(text, cuts):
    data = text.encode()
    whole = feed(b"", data, 0, True)[1]
    pending, pieces, prev = b"", [], 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        pending, ps = feed(pending, data[prev:c], prev, True)
        pieces += ps
        prev = c
    assert pending == b"" and pieces == whole
    # offsets tile the raw bytes exactly, and each piece is the normalization of its character
    assert [p[1] for p in pieces] == ([0] + [p[2] for p in pieces[:-1]] if pieces else [])
    assert not pieces or pieces[-1][2] == len(data)


def test_what_is_folded():
    assert norm_text("  ＡＣＭＥ\t\n Corp ", True) == "acme corp"
    assert norm_text("Straße", True) == "strasse"
    assert norm_text("ﬁnance", True) == "finance"
    assert norm_text("Acme", False) == "Acme"
    assert normalize_token(b"\xa9ab", True) == INVALID + b"ab"  # a stray continuation byte
    assert normalize_token("ab€".encode()[:-1], True) == b"ab"  # an unfinished character waits
