"""Python regexes parsed into a Thompson NFA over UTF-8 bytes (the front end of ``automaton.py``).

The token-mask engine sees tokens as byte strings (a token may even end in the middle of a
multi-byte character), so the NFA reads bytes, not code points.  Character semantics follow
Python's ``re`` on ``str`` exactly: each single-character item of a regex is turned into a set of
code points (by asking ``re`` itself where needed), and each code point range is split into UTF-8
byte-range sequences.  Anchors, lookaround, backreferences, conditionals, possessive quantifiers
and atomic groups are rejected with a ``PatternError`` that says what to change.
"""

from __future__ import annotations

import re
import re._constants as _sc
import re._parser as _sp
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, cast

__all__ = ["NFA", "PatternError", "build_nfa"]

_MAX_CP = 0x10FFFF
_MAX_NFA_STATES = 400_000

Ranges = tuple[tuple[int, int], ...]
ByteSeq = tuple[tuple[int, int], ...]


class PatternError(ValueError):
    """A forbidden pattern that cannot be turned into a token mask; the message says what to change."""


# --------------------------------------------------------------------------- UTF-8 ranges


def _utf8_sequences(lo: int, hi: int) -> list[ByteSeq]:
    """Split code point range [lo, hi] (surrogates excluded) into UTF-8 byte-range sequences.

    Every returned sequence is a "rectangle": all byte strings b1..bn with bi in its i-th range
    are valid UTF-8 for code points in [lo, hi], and together they cover exactly that range.
    """
    out: list[ByteSeq] = []
    stack = [(lo, hi)]
    while stack:
        s, e = stack.pop()
        if s > e:
            continue
        if s <= 0xDFFF and e >= 0xD800:
            stack.append((0xE000, e))
            stack.append((s, 0xD7FF))
            continue
        split = False
        for limit in (0x7F, 0x7FF, 0xFFFF):  # never mix encoded lengths
            if s <= limit < e:
                stack.append((limit + 1, e))
                stack.append((s, limit))
                split = True
                break
        if split:
            continue
        if e <= 0x7F:
            out.append(((s, e),))
            continue
        n = 2 if e <= 0x7FF else 3 if e <= 0xFFFF else 4
        for i in range(1, n):
            m = (1 << (6 * i)) - 1
            if (s & ~m) != (e & ~m):
                if s & m:
                    stack.append(((s | m) + 1, e))
                    stack.append((s, s | m))
                    split = True
                    break
                if (e & m) != m:
                    stack.append((e & ~m, e))
                    stack.append((s, (e & ~m) - 1))
                    split = True
                    break
        if split:
            continue
        out.append(tuple(zip(chr(s).encode(), chr(e).encode(), strict=True)))
    return out


@lru_cache(maxsize=4096)
def _ranges_to_seqs(ranges: Ranges) -> tuple[ByteSeq, ...]:
    seqs: list[ByteSeq] = []
    for lo, hi in ranges:
        seqs.extend(_utf8_sequences(lo, hi))
    return tuple(seqs)


def _normalize_ranges(ranges: Iterable[tuple[int, int]]) -> Ranges:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((a, b) for a, b in out)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    nxt = 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= _MAX_CP:
        out.append((nxt, _MAX_CP))
    return tuple(out)


# --------------------------------------------------------------------------- regex leaves


@lru_cache(maxsize=1)
def _all_chars() -> str:
    """Every code point once, in order: lets ``re`` itself tell which ones a class matches."""
    return "".join(map(chr, range(_MAX_CP + 1)))


@lru_cache(maxsize=1024)
def _ranges_by_re(class_src: str, flags: int) -> Ranges:
    """Code point ranges matched by a one-character regex, exactly as Python ``re`` decides."""
    rx = re.compile(class_src + "+", flags)
    return tuple((m.start(), m.end() - 1) for m in rx.finditer(_all_chars()))


_CATEGORY_SRC = {
    _sc.CATEGORY_DIGIT: r"\d",
    _sc.CATEGORY_NOT_DIGIT: r"\D",
    _sc.CATEGORY_SPACE: r"\s",
    _sc.CATEGORY_NOT_SPACE: r"\S",
    _sc.CATEGORY_WORD: r"\w",
    _sc.CATEGORY_NOT_WORD: r"\W",
}


def _cp_src(cp: int) -> str:
    return f"\\U{cp:08x}"


def _class_src(items: Sequence[tuple[object, object]]) -> str:
    parts: list[str] = []
    for op, av in items:
        if op is _sc.NEGATE:
            parts.insert(0, "^")
        elif op is _sc.LITERAL:
            parts.append(_cp_src(av))  # type: ignore[arg-type]
        elif op is _sc.RANGE:
            lo, hi = cast(tuple[int, int], av)
            parts.append(f"{_cp_src(lo)}-{_cp_src(hi)}")
        elif op is _sc.CATEGORY:
            parts.append(_CATEGORY_SRC[av])  # type: ignore[index]
        else:  # pragma: no cover - the parser emits nothing else inside [...]
            raise ValueError(f"unexpected class item {op}")
    return "[" + "".join(parts) + "]"


_CHAR_FLAGS = re.IGNORECASE | re.ASCII | re.DOTALL


def _leaf_ranges(op: object, av: object, flags: int) -> Ranges:
    """Code points matched by one single-character item of the parse tree."""
    icase = bool(flags & re.IGNORECASE)
    if op is _sc.ANY:
        return ((0, _MAX_CP),) if flags & re.DOTALL else ((0, 9), (11, _MAX_CP))
    if not icase:
        if op is _sc.LITERAL:
            return ((av, av),)  # type: ignore[return-value]
        if op is _sc.NOT_LITERAL:
            return _complement(((av, av),))  # type: ignore[arg-type]
        items = av  # IN
        if all(o in (_sc.LITERAL, _sc.RANGE, _sc.NEGATE) for o, _ in items):  # type: ignore[attr-defined]
            rs = []
            negate = False
            for o, v in items:  # type: ignore[attr-defined]
                if o is _sc.NEGATE:
                    negate = True
                elif o is _sc.LITERAL:
                    rs.append((v, v))
                else:
                    rs.append(tuple(v))
            norm = _normalize_ranges(rs)
            return _complement(norm) if negate else norm
    if op is _sc.LITERAL:
        src = "[" + _cp_src(av) + "]"  # type: ignore[arg-type]
    elif op is _sc.NOT_LITERAL:
        src = "[^" + _cp_src(av) + "]"  # type: ignore[arg-type]
    else:
        src = _class_src(av)  # type: ignore[arg-type]
    return _ranges_by_re(src, flags & _CHAR_FLAGS)


# --------------------------------------------------------------------------- NFA


class NFA:
    """Thompson NFA over byte ranges; accept states carry the label of their alternative."""

    def __init__(self) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []
        self.label: dict[int, int] = {}

    def new(self) -> int:
        if len(self.eps) >= _MAX_NFA_STATES:
            raise _TooBig
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def add_seqs(self, start: int, end: int, seqs: tuple[ByteSeq, ...]) -> None:
        """Byte-range sequences from start to end, sharing common suffixes (tails repeat a lot)."""
        tails: dict[ByteSeq, int] = {}
        for seq in seqs:
            nxt = end
            for k in range(len(seq) - 1, 0, -1):
                suffix = seq[k:]
                st = tails.get(suffix)
                if st is None:
                    st = self.new()
                    lo, hi = seq[k]
                    self.edges[st].append((lo, hi, nxt))
                    tails[suffix] = st
                nxt = st
            lo, hi = seq[0]
            self.edges[start].append((lo, hi, nxt))


class _TooBig(Exception):
    pass


_AT_NAMES = {
    _sc.AT_BEGINNING: "'^'",
    _sc.AT_BEGINNING_STRING: "'\\A'",
    _sc.AT_END: "'$'",
    _sc.AT_END_STRING: "'\\Z'",
    _sc.AT_BOUNDARY: "word boundary '\\b'",
    _sc.AT_NON_BOUNDARY: "non-boundary '\\B'",
}


class _RegexBuilder:
    def __init__(self, nfa: NFA, source: str) -> None:
        self.nfa = nfa
        self.source = source

    def fail(self, what: str, fix: str) -> PatternError:
        return PatternError(f"regex {self.source!r}: {what} is not supported in a token mask; {fix}")

    def seq(self, items: Iterable[tuple[object, object]], flags: int) -> tuple[int, int]:
        nfa = self.nfa
        start = end = nfa.new()
        for op, av in items:
            a, b = self.item(op, av, flags)
            nfa.eps[end].append(a)
            end = b
        return start, end

    def item(self, op: object, av: object, flags: int) -> tuple[int, int]:
        """(start, end) NFA states for one item of the parse tree; PatternError if unsupported."""
        nfa = self.nfa
        if op in (_sc.LITERAL, _sc.NOT_LITERAL, _sc.ANY, _sc.IN):
            s, e = nfa.new(), nfa.new()
            nfa.add_seqs(s, e, _ranges_to_seqs(_leaf_ranges(op, av, flags)))
            return s, e
        if op is _sc.SUBPATTERN:
            _group, add_flags, del_flags, sub = cast(tuple[Any, int, int, Any], av)
            return self.seq(sub, (flags | add_flags) & ~del_flags)
        if op is _sc.BRANCH:
            s, e = nfa.new(), nfa.new()
            for alt in av[1]:  # type: ignore[index]
                a, b = self.seq(alt, flags)
                nfa.eps[s].append(a)
                nfa.eps[b].append(e)
            return s, e
        if op in (_sc.MAX_REPEAT, _sc.MIN_REPEAT):
            lo, hi, sub = cast(tuple[int, Any, Any], av)
            s = e = nfa.new()
            for _ in range(lo):
                a, b = self.seq(sub, flags)
                nfa.eps[e].append(a)
                e = b
            if hi is _sc.MAXREPEAT:
                x = nfa.new()
                nfa.eps[e].append(x)
                a, b = self.seq(sub, flags)
                nfa.eps[x].append(a)
                nfa.eps[b].append(x)
                e = x
            else:
                for _ in range(hi - lo):
                    a, b = self.seq(sub, flags)
                    x = nfa.new()
                    nfa.eps[e] += [a, x]
                    nfa.eps[b].append(x)
                    e = x
            return s, e
        raise self.unsupported(op, av)

    def unsupported(self, op: object, av: object) -> PatternError:
        """The error for a construct a token mask cannot express, saying what to write instead."""
        if op is _sc.POSSESSIVE_REPEAT:
            return self.fail("a possessive quantifier (*+, ++, ?+, {m,n}+)", "use the plain quantifier instead")
        if op is _sc.ATOMIC_GROUP:
            return self.fail("an atomic group (?>...)", "use a plain group (?:...) instead")
        if op is _sc.AT:
            name = _AT_NAMES.get(av, "an anchor")  # type: ignore[call-overload]
            return PatternError(
                f"regex {self.source!r}: anchor {name} is not supported; token masks match anywhere "
                "in the output; drop the anchor"
            )
        if op is _sc.GROUPREF:
            return self.fail(
                "a backreference (\\1 or (?P=name))",
                "rewrite the pattern without it, e.g. repeat the group's sub-pattern",
            )
        if op is _sc.GROUPREF_EXISTS:
            return self.fail("a conditional group (?(id)yes|no)", "rewrite it as an alternation (yes|no)")
        if op in (_sc.ASSERT, _sc.ASSERT_NOT):
            direction = av[0]  # type: ignore[index]
            kind = "lookbehind" if direction < 0 else "lookahead"
            if op is _sc.ASSERT_NOT:
                kind = "negative " + kind
            return self.fail(kind, "rewrite the pattern without it")
        return self.fail(f"the construct {op}", "rewrite the pattern without it")


def _parse(pattern: str, flags: int) -> _sp.SubPattern:
    if not isinstance(pattern, str):
        raise PatternError(f"regex {pattern!r}: a forbidden regex must be a str")
    try:
        re.compile(pattern, flags)
        return _sp.parse(pattern, flags)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        raise PatternError(
            f"regex {pattern!r} does not compile in Python re: {exc.msg}{where}; fix the syntax"
        ) from exc
    except (RecursionError, OverflowError) as exc:
        raise PatternError(f"regex {pattern!r} is too complex to parse; simplify it") from exc


def build_nfa(patterns: list[str], *, ignore_case: bool = False) -> tuple[NFA, int]:
    """Thompson NFA for the union of ``patterns`` and its start state; accepts carry label i = ``patterns[i]``.

    PatternError for a pattern that does not compile, uses an unsupported construct, expands
    to too many states or matches the empty string.
    """
    base_flags = re.IGNORECASE if ignore_case else 0
    nfa = NFA()
    start = nfa.new()
    for i, pattern in enumerate(patterns):
        tree = _parse(pattern, base_flags)
        builder = _RegexBuilder(nfa, pattern)
        try:
            s, e = builder.seq(tree, tree.state.flags | base_flags)
        except _TooBig:
            raise PatternError(
                f"regex {pattern!r} is too complex for a token mask (bounded repeats expand to more than "
                f"{_MAX_NFA_STATES} automaton states); use smaller repeat counts"
            ) from None
        acc = nfa.new()
        nfa.eps[e].append(acc)
        nfa.label[acc] = i
        if acc in _reach_eps(nfa, s):
            raise PatternError(
                f"regex {pattern!r} matches the empty string; a forbidden pattern must match at least "
                "one character (use + instead of *, or drop the optional parts)"
            )
        nfa.eps[start].append(s)
    return nfa, start


def _reach_eps(nfa: NFA, start: int) -> set[int]:
    seen = {start}
    stack = [start]
    while stack:
        for t in nfa.eps[stack.pop()]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    return seen
