"""The phrase normalizer: chunking-independent, offset-exact, and what it folds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingate.gate.normalize import INVALID, Fold, feed, fold_text, normalize_token

TEXT = st.text(alphabet=st.sampled_from(list("aZ ß\tﬁＡｃé€😀\n.-\u0301\u200bІ")), max_size=30)
FOLDS = st.builds(Fold, casefold=st.booleans(), confusables=st.booleans(), accents=st.booleans(),
                  separators=st.booleans(), leet=st.booleans(), whole_word=st.booleans())


@settings(max_examples=300, deadline=None)
@given(TEXT, st.lists(st.integers(0, 200), max_size=12), FOLDS)
def test_feeding_in_any_chunks_gives_the_same_pieces(text, cuts, fold):
    data = text.encode()
    whole = feed(b"", data, 0, fold)[1]
    pending, pieces, prev = b"", [], 0
    for c in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        pending, ps = feed(pending, data[prev:c], prev, fold)
        pieces += ps
        prev = c
    assert pending == b"" and pieces == whole
    # pieces are in order and inside the text, one per character
    assert all(a[2] <= b[1] for a, b in zip(pieces, pieces[1:], strict=False))
    assert all(0 <= p[1] < p[2] <= len(data) for p in pieces)


def test_what_is_folded():
    f = Fold()
    assert fold_text("ＡＣＭＥ\t Corp", f) == "acrne  corp"  # UTS #39: 'm' looks like 'rn'
    assert fold_text("ＡＣＭＥ\t Corp", Fold(confusables=False)) == "acme  corp"
    assert fold_text("Straße", f) == "strasse"
    assert fold_text("ﬁnance", f) == "finance"
    assert fold_text("Acme", Fold(casefold=False, confusables=False)) == "Acme"
    assert fold_text("Аcmе", f) == fold_text("acme", f)  # Cyrillic а and е
    assert fold_text("ca\u200bfé", f) == fold_text("cafe\u0301", f) == "cafe"
    # accents exact: composed, so 'é' is one character that is not 'e' (a decomposed 'e' + U+0301 is)
    assert fold_text("cáfe", Fold(accents=False)) == "cáfe" and "cafe" not in fold_text("café", Fold(accents=False))
    assert fold_text("B-l-u-e  H.a.r", Fold(separators=True)) == "blueha" + "r"
    assert normalize_token(b"\xa9ab", f) == INVALID + b"ab"  # a stray continuation byte
    assert normalize_token(b"\xa9ab", Fold(separators=True)) == b"ab"
    assert normalize_token("ab€".encode()[:-1], f) == b"ab"  # an unfinished character waits
