"""A policy compiled for the gate: each rule kind's part (automata, encoders, heads), built once per
policy content and shared by every stream, with the token-mask caches of each vocabulary."""

from __future__ import annotations

from typing import Any

from ingate.gate.masks import MaskCache, TokenTable
from ingate.policy import Policy, PolicyError
from ingate.policy.kinds import kinds


class CompiledPolicy:
    """A policy's compiled parts, one per rule kind it uses: built once, shared by every stream."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.parts: dict[str, Any] = {}
        problems: list[str] = []
        for k in kinds():
            specs = list(policy.rules_of(k.name))
            if not specs:
                continue
            try:
                self.parts[k.name] = k.compile(policy.source, specs)
            except PolicyError as e:
                problems.extend(e.problems)
        if problems:
            raise PolicyError(problems)
        self._masks: dict[int, MaskCache] = {}

    def part(self, kind: str) -> Any | None:
        """The compiled rules of one kind (None: the policy has none)."""
        return self.parts.get(kind)

    @property
    def detectors(self) -> list:
        """The forbid rules' detectors: what masks and the vLLM plugin's rows step."""
        part = self.parts.get("forbid")
        return part.detectors if part is not None else []

    @property
    def semantic(self) -> list:
        """The semantic rules compiled (their encoders and heads loaded)."""
        part = self.parts.get("semantic")
        return part.rules if part is not None else []

    @property
    def semantic_input(self) -> list:
        """Semantic rules that judge the prompt before generating."""
        part = self.parts.get("semantic")
        return part.input if part is not None else []

    def prepare(self, table: TokenTable) -> None:
        """Compute the masks every stream starts from, ahead of the first request (each kind that
        masks says which: `RuleKind.prepare`)."""
        masks = self.masks_for(table)
        for k in kinds():
            part = self.parts.get(k.name)
            prepare = getattr(k, "prepare", None)
            if part is not None and prepare is not None:
                prepare(part, masks)

    def masks_for(self, table: TokenTable) -> MaskCache:
        mc = self._masks.get(id(table))
        if mc is None or mc.table is not table:
            mc = self._masks[id(table)] = MaskCache(table)
        return mc


_COMPILED: dict[str, CompiledPolicy] = {}


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile once per content hash; later calls return the cached automata and masks."""
    key = policy.digest or str(id(policy))
    c = _COMPILED.get(key)
    if c is None:
        c = _COMPILED[key] = CompiledPolicy(policy)
    return c
