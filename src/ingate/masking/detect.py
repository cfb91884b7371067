"""What `mask_upstream` covers, compiled once per policy: the detectors that find values in a text.

An entry names a built-in pattern (`email`, `phone`, ...) or a forbid rule of the policy (its
patterns, regexes and phrases, read as the rule reads them: folds and all). Each is compiled by
the forbid kind's own compiler, so a value is found in a request exactly as the output side would
find it: checksums, separators, encodings (percent, HTML, \\u escapes; `ingate.patterns`).

A client's own text that looks like a placeholder of a covered type (`[EMAIL_1]` written in a
message) is found too, as a LITERAL value: it is masked like any value and comes back as the
client wrote it, so no text in a request can forge a placeholder that would restore another value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ingate.gate.detector import PatternDetector
from ingate.gate.kinds.forbid import ForbidSpec, compile_forbid
from ingate.masking.placeholders import LITERAL, PLACEHOLDER_LIKE, norm_type, type_name
from ingate.patterns import BUILTIN_PATTERNS
from ingate.policy import Policy, PolicyError

Span = tuple[int, int, str]  # start, end (str offsets), type


@dataclass
class Finder:
    detectors: list[tuple[PatternDetector, list[str]]]  # a detector, and the type of each of its labels

    @property
    def types(self) -> frozenset[str]:
        return frozenset(t for _, ts in self.detectors for t in ts) | {LITERAL}

    def find(self, text: str) -> list[Span]:
        """The covered values in `text`, overlapping finds merged (every covered character is in one)."""
        data = text.encode("utf-8", "surrogatepass")
        spans: list[Span] = []
        for d, types in self.detectors:
            for s, e, labels in d.matches(data):
                spans.append((s, e, types[min(labels)]))
        if not text.isascii() and spans:
            spans = [(_chars(data, s), _chars(data, e), t) for s, e, t in spans]
        known = self.types
        spans += [(m.start(), m.end(), LITERAL) for m in PLACEHOLDER_LIKE.finditer(text)
                  if norm_type(m.group(1)) in known]
        return _merge(spans)


def _chars(data: bytes, b: int) -> int:
    return len(data[:b].decode("utf-8", "surrogatepass"))


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s, e, t in sorted(spans, key=lambda x: (x[0], -x[1])):
        if out and s < out[-1][1]:
            ps, pe, pt = out[-1]
            out[-1] = (ps, max(pe, e), pt)
        else:
            out.append((s, e, t))
    return out


_FINDERS: dict[str, Finder] = {}


def finder(policy: Policy) -> Finder:
    """The policy's mask_upstream compiled (cached by the policy's digest)."""
    key = policy.digest or str(id(policy))
    f = _FINDERS.get(key)
    if f is None:
        f = _FINDERS[key] = _compile(policy)
    return f


def _compile(policy: Policy) -> Finder:
    assert policy.mask is not None
    rules = {r.id: r for r in policy.rules_of("forbid")}
    out: list[tuple[PatternDetector, list[str]]] = []
    for name in policy.mask.values:
        if name in BUILTIN_PATTERNS:
            spec = ForbidSpec(id=f"mask_upstream:{name}", action="redact", patterns=(name,))
        elif name in rules:
            spec = dataclasses.replace(rules[name], action="redact")  # redact: one scan, no masks to build
        else:
            raise PolicyError([f"{policy.source}, field mask_upstream: {name!r} is neither a built-in pattern nor "
                               "a forbid rule of this policy"])
        for d in compile_forbid(policy.source, spec):
            out.append((d, [_type(label, spec) for label in d.labels]))
    return Finder(out)


def _type(label: str, spec: ForbidSpec) -> str:
    if spec.placeholder:
        return type_name(spec.placeholder)
    if label in BUILTIN_PATTERNS:
        return type_name(BUILTIN_PATTERNS[label][1])
    return type_name(spec.id)
