"""Release safety, by property: random text, random tokenizations, an adversarial "model".

No engine here: the gate is fed token streams drawn by hypothesis, so every split of a
forbidden phrase or pattern across tokens is tried. The oracle is independent of the gate:
Python's `re` over every span of the final text, and a per-character normalization for phrases.
"""

from __future__ import annotations

import re
import unicodedata

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import random_split
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate, Verdict
from ingate.gate.masks import TokenTable
from ingate.patterns import BUILTIN_PATTERNS
from ingate.policy import parse_policy

FRAGMENTS = ["acme corp", "ACME  Corp", "Ａｃｍｅ\tcorp", "acme", " corp", "globex", "Glob", "ex",
             "john.smith@example.com", "a@b.io", "@", ".", "415-555-0132", "415", "-555-", "0132",
             "secret-123456", "secret-", "123", " ", "  ", "x", "é", "ß", "the ", "call ", "\n"]
BYTES_ALPHABET = [bytes([b]) for b in b" .-@0123456789abcdeghijklmnoprstxACEGS"]


def _norm(ch: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", ch).casefold())


def _phrase_spans(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    """(start, end) character spans whose normalized form equals a normalized phrase."""
    def norm(s: str) -> str:
        return re.sub(r"\s+", " ", "".join(_norm(c) for c in s))
    targets = {norm(p).strip() for p in phrases}
    out = []
    for i in range(len(text)):
        for j in range(i + 1, len(text) + 1):
            if norm(text[i:j]) in targets:
                out.append((i, j))
    return out


def _regex_spans(text: str, regexes: list[str]) -> list[tuple[int, int]]:
    out = []
    for rx in regexes:
        c = re.compile(rx)
        for i in range(len(text)):
            for j in range(i + 1, len(text) + 1):
                if c.fullmatch(text, i, j):
                    out.append((i, j))
    return out


def _bad_bytes(raw: bytes, phrases: list[str], regexes: list[str]) -> list[tuple[int, int]]:
    """Byte spans of every match in raw (decoded leniently; the tests' texts are valid UTF-8)."""
    text = raw.decode("utf-8", errors="surrogateescape")  # a dropped token can split a character
    offs = [len(text[:i].encode("utf-8", errors="surrogateescape")) for i in range(len(text) + 1)]
    spans = _phrase_spans(text, phrases) + _regex_spans(text, regexes)
    return sorted((offs[i], offs[j]) for i, j in spans)


def _redact(raw: bytes, spans: list[tuple[int, int]], upto: int) -> str:
    """The oracle's release of raw[:upto]: each span as one '■' (overlaps merged). A token dropped
    by a rollback may leave a split character, shown as U+FFFD as the gate's decoder shows it."""
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, pos = [], 0
    for s, e in merged:
        if e > upto:
            break
        out.append(raw[pos:s].decode("utf-8", errors="replace"))
        out.append("■")
        pos = e
    out.append(raw[pos:upto].decode("utf-8", errors="replace"))
    return "".join(out)


POLICIES = {
    "phrases": (["Acme Corp", "Globex"], []),
    "patterns": ([], [BUILTIN_PATTERNS["email"][0], BUILTIN_PATTERNS["phone"][0], r"secret-[0-9]{6}"]),
    "both": (["Acme Corp", "Globex"], [BUILTIN_PATTERNS["email"][0], BUILTIN_PATTERNS["phone"][0]]),
}


def _policy_yaml(kind: str, action: str) -> str:
    phrases, regexes = POLICIES[kind]
    rules = []
    if phrases:
        # phrases as written, the definition `_norm` above writes; the folding modes (the defaults:
        # confusables, accents, separators for prevent) have their own oracle in test_spelling.py
        rules.append(f"  - id: words\n    forbid: {{phrases: {phrases!r}, separators: exact, confusables: exact, "
                     f"accents: exact}}\n    action: {action}\n"
                     + ("    placeholder: '■'\n" if action == "redact" else ""))
    if regexes:
        rx = ", ".join("'" + r.replace("'", "''") + "'" for r in regexes)
        rules.append(f"  - id: pats\n    forbid: {{regex: [{rx}]}}\n    action: {action}\n"
                     + ("    placeholder: '■'\n" if action == "redact" else ""))
    return "version: 1\nname: prop\nmax_rollbacks: 1000\nrules:\n" + "".join(rules)


_TABLES: dict[int, TokenTable] = {}


@st.composite
def token_streams(draw):
    pieces = draw(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=10))
    return random_split(draw, "".join(pieces).encode())


def _table(vocab: list[bytes]) -> TokenTable:
    return TokenTable(vocab)


def _mixed_yaml() -> str:
    """Phrases prevented and patterns redacted in one policy: a rollback for a phrase may take back
    the token that completed a redaction (an address that runs on into "acme")."""
    words = _policy_yaml("phrases", "prevent").split("rules:\n", 1)[1]
    pats = _policy_yaml("patterns", "redact").split("rules:\n", 1)[1]
    return "version: 1\nname: prop\nmax_rollbacks: 1000\nrules:\n" + words + pats


def _run(kind: str, action: str, stream: list[bytes], released_at_rollback: list[int] | None = None):
    policy = parse_policy(_mixed_yaml() if kind == "mixed" else _policy_yaml(kind, action), source="prop.yaml")
    compiled = compile_policy(policy)
    vocab = sorted(set(stream) | set(BYTES_ALPHABET))
    ids = {b: i for i, b in enumerate(vocab)}
    gate = Gate(compiled, _table(vocab))
    released_prefix = b""
    outputs: list[str] = []
    stopped = False
    queue = [ids[t] for t in stream]
    steps = 0
    while queue and steps < 400:
        steps += 1
        tok = queue.pop(0)
        banned = gate.banned()
        if banned is not None and tok in set(banned.tolist()):
            continue  # a sampler with this ban would not choose it
        mask = gate.mask() if gate.preventers else None
        adm = gate.admit(tok)
        if mask is not None:  # the mask and admission agree on every token the model proposes
            assert bool(mask[tok]) == (adm.verdict in (Verdict.RESAMPLE, Verdict.ROLLBACK)), (tok, adm)
        if adm.verdict in (Verdict.RESAMPLE, Verdict.ROLLBACK):
            if adm.verdict is Verdict.ROLLBACK and released_at_rollback is not None:
                released_at_rollback.append(gate.hold.released)
            continue
        outputs.append(gate.release())
        # release is monotonic: what was released is still the prefix of the text, even after rollbacks
        assert bytes(gate.raw[: len(released_prefix)]) == released_prefix
        released_prefix = bytes(gate.raw[: gate.hold.released])
        if adm.verdict is Verdict.STOP:
            stopped = True
            break
    if not stopped:
        outputs.append(gate.release(final=True))
    return policy, gate, "".join(outputs), stopped


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(token_streams(), st.sampled_from(list(POLICIES)))
def test_redact_releases_exactly_the_oracle_redaction(stream, kind):
    phrases, regexes = POLICIES[kind]
    _, gate, out, _ = _run(kind, "redact", stream)
    raw = bytes(gate.raw)
    assert raw == b"".join(stream)  # redact never rolls back or drops text
    assert gate.hold.released == len(raw)  # everything admissible is released by the end
    assert out == _redact(raw, _bad_bytes(raw, phrases, regexes), len(raw))


@SETTINGS
@given(token_streams(), st.sampled_from(list(POLICIES)))
def test_prevent_never_releases_a_match_or_a_prevented_partial(stream, kind):
    phrases, regexes = POLICIES[kind]
    _, gate, out, stopped = _run(kind, "prevent", stream)
    raw = bytes(gate.raw)
    assert not stopped
    assert _bad_bytes(raw, phrases, regexes) == []  # no match was ever admitted
    assert out == raw.decode("utf-8", errors="replace")  # and everything admitted is released at the end


@SETTINGS
@given(token_streams(), st.sampled_from(list(POLICIES)))
def test_stop_releases_only_what_precedes_the_match(stream, kind):
    phrases, regexes = POLICIES[kind]
    _, gate, out, stopped = _run(kind, "stop", stream)
    raw = bytes(gate.raw)
    bad = _bad_bytes(raw, phrases, regexes)
    if not bad:
        assert not stopped and out == raw.decode()
        return
    assert stopped
    first = min(s for s, _ in bad)
    assert gate.hold.released <= first
    released = raw[: gate.hold.released]
    assert out == released.decode("utf-8", errors="replace")
    assert _bad_bytes(released, phrases, regexes) == []


@SETTINGS
@given(token_streams())
@example([b"a", b"cmeacme ", b"corp", b"john.smith@example.com"])  # a revived address
@example([b"acme corp\xef", b"\xbc\xa1\xef\xbd\x83\xef\xbd\x8d\xef\xbd\x85\tcorpjohn.smith@example.com"])
def test_prevent_and_redact_together_release_the_oracle_redaction_of_what_was_admitted(stream):
    """Redaction of the admitted text, exactly, with one allowance that is inherent: a rollback can
    revive an address whose first characters were released after its partial match had died
    ("a" + "cmeacme " released "a"; rolled back, "a" + "john@..." is one address). Released text is
    final, so the gate redacts it from the release point at that rollback on, and shows no whole
    address. The oracle clips such a span to that point."""
    phrases, regexes = POLICIES["phrases"][0], POLICIES["patterns"][1]
    cuts: list[int] = []
    _, gate, out, stopped = _run("mixed", "", stream, cuts)
    raw = bytes(gate.raw)
    assert not stopped and _bad_bytes(raw, phrases, []) == []
    spans = [(max([s] + [r for r in cuts if s < r < e]), e) for s, e in _bad_bytes(raw, [], regexes)]
    assert out == _redact(raw, spans, len(raw))


def test_the_phone_number_is_never_released_nine_digits_deep():
    """DESIGN.md: masking only the completing token released '415-555-013'. Hold-back forbids it."""
    stream = [b"Call ", b"415", b"-", b"555", b"-", b"013", b"2", b" now"]
    _, gate, out, _ = _run("patterns", "prevent", stream)
    assert "555" not in out and "013" not in out
    assert gate.rollbacks >= 1
