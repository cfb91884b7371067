"""A toy rule kind for tests/test_architecture.py: the whole kind in one module, registered with one
call (`register_kind("max_words", "toykind:KIND")`). It ends a stream at its N+1-th word.

    - id: short
      max_words: {limit: 50}
      action: stop
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.policy.kinds import RuleKind, SpecContext
from ingate.policy.schema import Strict


class MaxWords(Strict):  # what a policy may write
    limit: int = Field(ge=1)


@dataclass(frozen=True)
class MaxWordsSpec:  # the validated rule
    id: str
    action: str
    limit: int
    message: str | None
    kind: Literal["max_words"] = field(default="max_words", init=False)


class MaxWordsKind(RuleKind):
    name = "max_words"
    block = MaxWords
    about = "(a word limit)"
    actions = ("stop",)
    options = {"message": (str | None, Field(default=None, min_length=1))}

    def spec(self, rule: Any, ctx: SpecContext) -> MaxWordsSpec:
        return MaxWordsSpec(rule.id, rule.action, rule.max_words.limit, rule.message)

    def checks(self, part: list[MaxWordsSpec], options: Any) -> list[Check]:
        return [WordCheck(s) for s in part]

    def describe(self, spec: MaxWordsSpec) -> str:
        return f"  - {spec.id}: {spec.action} after {spec.limit} words"


KIND = MaxWordsKind()


class WordCheck(Check):  # the check on one stream
    def __init__(self, spec: MaxWordsSpec):
        self.rule_id, self.spec = spec.id, spec

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        starts = [i for i in range(len(s.raw)) if not chr(s.raw[i]).isspace()
                  and (i == 0 or chr(s.raw[i - 1]).isspace())]
        if len(starts) <= self.spec.limit:
            return None
        at = starts[self.spec.limit]
        return [Finding(Kind.STOP, self.rule_id, at, len(s.raw), f"word {self.spec.limit + 1}",
                        epilogue=self.spec.message or "")]
