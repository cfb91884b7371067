"""The vault: which value stands behind which placeholder, for one request or one session.

The same value gets the same placeholder wherever it occurs; distinct values never share one
(values are compared exactly, byte for byte, so what is restored is what was sent). Placeholders
are numbered per type in the order values are first seen. A session's vault is kept between
requests (`ingate.masking.store`, encrypted); then numbering goes on from where it stopped, and
a value seen in an earlier turn keeps its placeholder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ingate.masking.placeholders import placeholder


@dataclass
class Vault:
    by_value: dict[tuple[str, str], str] = field(default_factory=dict)  # (type, value) -> placeholder
    values: dict[str, str] = field(default_factory=dict)  # placeholder -> value
    kinds: dict[str, list[str]] = field(default_factory=dict)  # type -> its placeholders, in order
    used: Counter[str] = field(default_factory=Counter)  # placeholder -> occurrences masked in this request

    def put(self, kind: str, value: str) -> str:
        """The placeholder of `value` (of type `kind`), a new one when it is new."""
        key = (kind, value)
        ph = self.by_value.get(key)
        if ph is None:
            mine = self.kinds.setdefault(kind, [])
            ph = placeholder(kind, len(mine) + 1)
            mine.append(ph)
            self.by_value[key], self.values[ph] = ph, value
        self.used[ph] += 1
        return ph

    def kind_of(self, ph: str) -> str:
        return ph[1:ph.rindex("_")]

    def counts(self) -> dict[str, int]:
        """Occurrences masked in this request, per type: what the report and the metrics may show."""
        out: Counter[str] = Counter()
        for ph, n in self.used.items():
            out[self.kind_of(ph).lower()] += n
        return dict(sorted(out.items()))

    def to_json(self) -> dict:
        """What a session store keeps (encrypted): the values in placeholder order."""
        return {"kinds": {k: [self.values[p] for p in ps] for k, ps in self.kinds.items()}}

    def merge(self, other: Vault) -> None:
        """Add `other`'s values that this vault lacks (their placeholders may be renumbered)."""
        for kind, phs in other.kinds.items():
            for ph in phs:
                key = (kind, other.values[ph])
                if key not in self.by_value:
                    self.put(kind, other.values[ph])
                    self.used[self.by_value[key]] -= 1
        self.used = +self.used

    @classmethod
    def from_json(cls, data: dict) -> Vault:
        v = cls()
        for kind, values in (data.get("kinds") or {}).items():
            for value in values:
                v.put(str(kind), str(value))
        v.used.clear()
        return v
