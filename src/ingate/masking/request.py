"""One request's masking: its texts masked on the way in, its answer restored on the way out.

`Masking.start(policy, vault)` for a policy with `mask_upstream`. The pipeline
(`ingate.core.govern`) masks every text the model is given (each message's content: system, user,
assistant, tool results, the tool calls written into the history, the tools' descriptions and
parameters written into the system message; a raw prompt; the stop sequences) before the drive
sees the request; an upstream's body masks what it adds from the request
(`response_format`'s descriptions: `schema`). The gate then governs the model's own text,
placeholders and all: a value the model wrote itself, never given, is governed by the output rules
as ever. Only then are placeholders restored (`ingate.masking.restore`).

What is recorded: per distinct value a decision `mask` (its matched text is the value, so the
audit keeps its keyed digest, never the value: `audit_decisions`), and per type the count of
occurrences (`counts`, for the report and the metrics).
"""

from __future__ import annotations

from typing import Any

from ingate.gate.decision import Action, Decision
from ingate.masking.detect import Finder, finder
from ingate.masking.restore import KEEP, Restorer
from ingate.masking.vault import Vault
from ingate.policy import Policy

RULE_ID = "mask_upstream"
DESCRIPTIVE = frozenset({"description", "title", "examples", "default", "$comment"})  # free text in a JSON Schema


class Masking:
    def __init__(self, policy: Policy, finder: Finder, vault: Vault):
        assert policy.mask is not None
        self.spec, self.finder, self.vault = policy.mask, finder, vault

    @classmethod
    def start(cls, policy: Policy, vault: Vault | None = None) -> Masking | None:
        """The masking of one request under `policy` (None: it masks nothing). `vault`: a session's."""
        if policy.mask is None:
            return None
        return cls(policy, finder(policy), vault if vault is not None else Vault())

    def text(self, text: str) -> str:
        """`text` with every covered value replaced by its placeholder."""
        spans = self.finder.find(text)
        if not spans:
            return text
        out, pos = [], 0
        for s, e, kind in spans:
            out += [text[pos:s], self.vault.put(kind, text[s:e])]
            pos = e
        out.append(text[pos:])
        return "".join(out)

    def messages(self, messages: list[dict[str, str]] | str) -> list[dict[str, str]] | str:
        if isinstance(messages, str):
            return self.text(messages)
        return [{k: self.text(v) if k == "content" and isinstance(v, str) else v for k, v in m.items()}
                for m in messages]

    def schema(self, obj: Any, free: bool = False) -> Any:
        """A JSON Schema (response_format) with its free text masked: descriptions, titles, examples,
        defaults. What constrains the output (enum, const, pattern, property names) is left as is:
        the gate checks the answer against the client's own schema."""
        if isinstance(obj, str):
            return self.text(obj) if free else obj
        if isinstance(obj, list):
            return [self.schema(x, free) for x in obj]
        if isinstance(obj, dict):
            return {k: self.schema(v, free or k in DESCRIPTIVE) for k, v in obj.items()}
        return obj

    def restorer(self, json_after: str | bool | None) -> Restorer | None:
        """The answer's restorer (None when the policy keeps the placeholders)."""
        if self.spec.answer == KEEP or not self.vault.values:
            return None
        return Restorer(self.vault, self.spec.answer, json_after)

    def counts(self) -> dict[str, int]:
        return self.vault.counts()

    def audit_decisions(self) -> list[Decision]:
        """One decision per value masked in this request: its keyed digest goes to the audit."""
        out = []
        for ph, n in sorted(self.vault.used.items()):
            kind = self.vault.kind_of(ph)
            out.append(Decision(RULE_ID, Action.MASK, 0, 0, self.vault.values[ph].encode("utf-8", "surrogatepass"),
                                f"masked a {kind.lower()} value as {ph} ({n} occurrence{'s' if n > 1 else ''}) before "
                                "the model saw it", f"masked a {kind.lower()} value"))
        return out
