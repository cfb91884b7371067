"""Byte-level DFAs for forbidden regexes, checked against Python ``re``; search DFAs against brute force."""

from __future__ import annotations

import random
import re
import string
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingate.gate import search
from ingate.gate.automaton import DEAD, ByteDFA, compile_regexes
from ingate.gate.regex import PatternError
from ingate.gate.search import SearchDFA, search_dfa

PII = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "phone": r"(?:\+?1[-. ]?)?\(?[0-9]{3}\)?[-. ]?[0-9]{3}[-. ]?[0-9]{4}",
    "credit_card": r"[0-9](?:[ -]?[0-9]){12,18}",
    "ssn": r"[0-9]{3}-[0-9]{2}-[0-9]{4}",
    "ipv4": r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    "iban": r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
    "api_key": r"(?:sk|pk|rk)[-_](?:live[-_]|test[-_])?[A-Za-z0-9]{16,}"
    r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}",
}

OTHER = [
    r"[à-ÿ]+",
    r"\w+",
    r".",
    r"a.c",
    r"(?:foo|bar)+baz?",
    r"[^a-z\s]{2,4}",
    r"\d+\.\d*",
    r"(?i)hello",
    r"(?i:stra)ße",
    r"[A-Za-z]{3}[0-9]?",
    r"\S\s\W",
    r"(?P<x>ab)+?c",
    r"x{2}y{1,}z{0,2}q",
    r"é|ß|ｆ|😀",
    r"[\D][^\d\n]",
]

PATTERNS = list(PII.values()) + OTHER

ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \t\n" + "éßｆ😀ÀÿĀ١ſKİ\u3000"

texts = st.text(alphabet=ALPHABET, max_size=24)


def _encodable(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


@cache
def _dfa(patterns: tuple[str, ...], ignore_case: bool = False) -> ByteDFA:
    return compile_regexes(list(patterns), ignore_case=ignore_case)


@cache
def _search(patterns: tuple[str, ...]) -> SearchDFA:
    return search_dfa(_dfa(patterns))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A string near a match: a generated match with a few random edits (or plain random text)."""
    s = draw(base)
    chars = list(s)
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["ins", "del", "sub"]))
        i = draw(st.integers(0, len(chars)))
        c = draw(st.sampled_from(ALPHABET))
        if op == "ins":
            chars.insert(i, c)
        elif chars and i < len(chars):
            if op == "del":
                del chars[i]
            else:
                chars[i] = c
    return "".join(chars)


def _near(pattern: str) -> st.SearchStrategy[str]:
    matches = st.from_regex(pattern, fullmatch=True).filter(_encodable)
    return mutated(st.one_of(matches, texts))


# --------------------------------------------------------------------------- regexes


@pytest.mark.parametrize("pattern", PATTERNS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_regex_fullmatch_agrees_with_re(pattern: str, data: st.DataObject) -> None:
    s = data.draw(_near(pattern))
    dfa = _dfa((pattern,))
    expected = frozenset({0}) if re.fullmatch(pattern, s) else frozenset()
    assert dfa.fullmatch(s.encode()) == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_regex_union_labels(data: st.DataObject) -> None:
    pattern = data.draw(st.sampled_from(PATTERNS))
    s = data.draw(_near(pattern))
    expected = frozenset(i for i, p in enumerate(PATTERNS) if re.fullmatch(p, s))
    assert _dfa(tuple(PATTERNS)).fullmatch(s.encode()) == expected


ICASE = [r"straße", r"[a-c]x", r"[^k]s", r"\w-K", r"[S-Z]+", r"ſ\d"]
ICASE_SAMPLES = ["STRAẞE", "sTrAßE", "STRASSE", "Cx", "CX", "Ks", "\u212as", "xS", "é-K", "_-k", "SſZ", "ſ١", "S1"]


@settings(max_examples=100, deadline=None)
@given(s=st.one_of(st.text(alphabet="abcxXsSſkKK-ẞßtTrRaAeEzZ1١ ", max_size=8), st.sampled_from(ICASE_SAMPLES)))
def test_regex_ignore_case_agrees_with_re(s: str) -> None:
    dfa = _dfa(tuple(ICASE), True)
    expected = frozenset(j for j, p in enumerate(ICASE) if re.fullmatch(p, s, re.IGNORECASE))
    assert dfa.fullmatch(s.encode()) == expected


code_points = st.integers(0, 0x10FFFF).filter(lambda c: not 0xD800 <= c <= 0xDFFF)


@settings(max_examples=80, deadline=None)
@given(lo=code_points, hi=code_points, probes=st.lists(code_points, max_size=8), raw=st.binary(max_size=5))
def test_utf8_range_split_is_exact(lo: int, hi: int, probes: list[int], raw: bytes) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    dfa = compile_regexes([f"[\\U{lo:08x}-\\U{hi:08x}]"])
    for cp in [lo, hi, lo - 1, hi + 1, (lo + hi) // 2, *probes]:
        if 0 <= cp <= 0x10FFFF and not 0xD800 <= cp <= 0xDFFF:
            assert bool(dfa.fullmatch(chr(cp).encode())) == (lo <= cp <= hi)
    # arbitrary bytes match only if they are the UTF-8 encoding of one code point in range
    try:
        decoded = raw.decode()
        ok = len(decoded) == 1 and lo <= ord(decoded) <= hi
    except UnicodeDecodeError:
        ok = False
    assert bool(dfa.fullmatch(raw)) == ok


def test_partial_utf8_and_can_continue() -> None:
    dfa = compile_regexes(["é+x", "abc"])
    state = dfa.trans[0][b"\xc3"[0]]
    assert state != DEAD and dfa.can_continue(state) and not dfa.accept[state]
    assert dfa.fullmatch(b"\xc3") == frozenset()
    s = 0
    for b in b"abc":
        s = dfa.trans[s][b]
    assert dfa.accept[s] == frozenset({1}) and not dfa.can_continue(s)
    assert not dfa.can_continue(DEAD)
    assert dfa.can_continue(0)
    assert all(len(row) == 256 for row in dfa.trans)


def test_empty_union_matches_nothing() -> None:
    dfa = compile_regexes([])
    assert dfa.fullmatch(b"") == frozenset() and dfa.fullmatch(b"a") == frozenset()
    sd = search_dfa(dfa)
    assert sd.table.shape == (1, 256) and not sd.accept[0]


@pytest.mark.parametrize(
    ("pattern", "keywords"),
    [
        ("a*", ["empty string", "at least one character"]),
        ("", ["empty string"]),
        ("(?:ab)?", ["empty string"]),
        ("^abc", ["anchor", "anywhere", "drop the anchor"]),
        ("abc$", ["anchor", "drop the anchor"]),
        (r"\bfoo", ["boundary", "drop the anchor"]),
        (r"foo\B", ["boundary", "drop the anchor"]),
        (r"\Afoo", ["anchor", "drop the anchor"]),
        (r"foo\Z", ["anchor", "drop the anchor"]),
        (r"(a)\1", ["backreference", "rewrite"]),
        (r"(?P<n>a)(?P=n)", ["backreference"]),
        ("a(?=b)", ["lookahead", "rewrite the pattern without it"]),
        ("a(?!b)", ["negative lookahead"]),
        ("a(?<=b)", ["lookbehind is not supported in a token mask", "rewrite the pattern without it"]),
        ("(?<!b)a", ["lookbehind"]),
        ("(a)?(?(1)b|c)", ["conditional", "alternation"]),
        ("a++", ["possessive", "plain quantifier"]),
        ("(?>ab)", ["atomic group"]),
        ("(ab", ["does not compile", "position 0", "missing )"]),
        ("a{3,1}", ["does not compile", "position"]),
        ("[z-a]", ["does not compile", "bad character range"]),
    ],
)
def test_regex_rejections_explain_the_fix(pattern: str, keywords: list[str]) -> None:
    with pytest.raises(PatternError) as info:
        compile_regexes(["ok", pattern])
    msg = str(info.value)
    assert repr(pattern) in msg
    for word in keywords:
        assert word in msg


def test_pattern_error_is_value_error() -> None:
    assert issubclass(PatternError, ValueError)


# --------------------------------------------------------------------------- search DFA


def _check_search(dfa: ByteDFA, sd: SearchDFA, text: str) -> None:
    data = text.encode()
    state = 0
    for j in range(1, len(data) + 1):
        state = int(sd.table[state, data[j - 1]])
        expected: set[int] = set()
        for i in range(j):
            expected |= dfa.fullmatch(data[i:j])
        assert sd.accept[state] == expected, (text, j)


SEARCH_SETS = [
    (PII["phone"],),
    (PII["credit_card"],),
    (PII["ipv4"], PII["ssn"]),
    (PII["iban"],),
    (PII["email"],),
    (PII["api_key"],),
    (r"[à-ÿ]+", r"ab|cd", r"\d{2,3}", r"a.c", "é😀"),
]


@pytest.mark.parametrize("patterns", SEARCH_SETS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_search_dfa_matches_brute_force(patterns: tuple[str, ...], data: st.DataObject) -> None:
    parts = data.draw(st.lists(st.one_of(texts, *[st.from_regex(p, fullmatch=True) for p in patterns]), max_size=3))
    text = "".join(p for p in parts if _encodable(p))[:60]
    _check_search(_dfa(patterns), _search(patterns), text)


def test_search_dfa_shape_and_index() -> None:
    patterns = SEARCH_SETS[-1]
    sd = _search(patterns)
    assert sd.table.dtype == np.int32 and sd.table.shape == (len(sd.members), 256)
    assert int(sd.table.min()) >= 0
    assert sd.members[0] == frozenset() and sd.index[frozenset()] == 0
    for k, m in enumerate(sd.members):
        assert sd.index[m] == k


def test_search_dfa_state_limit() -> None:
    dfa = compile_regexes([PII["iban"]])
    with pytest.raises(PatternError, match="too complex"):
        search_dfa(dfa, max_states=50)


def test_search_dfa_plain_fallback_agrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without co-set merging the search DFA is bigger but must accept exactly the same."""
    patterns = (PII["phone"], r"ab|cd")
    dfa = _dfa(patterns)
    merged = search_dfa(dfa)
    monkeypatch.setattr(search, "_MAX_COSET_ANCHORED", 0)
    plain = search_dfa(dfa)
    assert len(plain.members) > len(merged.members)
    rng = random.Random(0)
    for _ in range(300):
        data = "".join(rng.choice("0123456789-. ()+1abcdé") for _ in range(rng.randint(0, 30))).encode()
        a = b = 0
        for byte in data:
            a, b = int(merged.table[a, byte]), int(plain.table[b, byte])
            assert merged.accept[a] == plain.accept[b]


def test_hand_built_byte_dfa() -> None:
    """A ByteDFA built by hand gets ``live`` and byte classes derived from its rows."""
    rows = [[DEAD] * 256 for _ in range(4)]
    rows[0][ord("a")] = 1
    rows[1][ord("b")] = 2
    rows[0][ord("z")] = 3  # a dead end that never accepts
    dfa = ByteDFA(trans=rows, accept=[frozenset(), frozenset(), frozenset({0}), frozenset()])
    assert dfa.live == [True, True, False, False]
    assert dfa.fullmatch(b"ab") == {0} and dfa.fullmatch(b"a") == frozenset()
    sd = search_dfa(dfa)
    state = 0
    hits = []
    for byte in b"xabzab":
        state = int(sd.table[state, byte])
        hits.append(sorted(sd.accept[state]))
    assert hits == [[], [], [0], [], [], [0]]
