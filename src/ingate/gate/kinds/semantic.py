"""The `semantic` rule kind: what a token group means, judged against concept examples or by a
head trained on labelled responses.

    - id: explosives
      semantic:
        deny: [{concept: making explosives, examples_file: explosives.txt}]   # or allow_only, or head
        threshold: 0.45
      action: resample          # roll the group back and regenerate it; or stop
      max_retries: 2

Everything of the kind is here: the schema (`Semantic`, `Concept`, `Head`), the validated spec
(`SemanticRuleSpec`), the compiled rules (encoders and embeddings, loaded once: `ingate.semantic`),
and the check (`SemanticCheck`): the stream is cut into token groups, each judged off-thread; an
open or unjudged group is held back like a partial match, and a rejected one is regenerated or
ends the stream (`semantic/groups.py` keeps the groups, `semantic/scorer.py` judges them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
from pydantic import Field, field_validator, model_validator

from ingate import encoders
from ingate.gate.kinds.base import Check, Finding, Kind, Stream
from ingate.policy.kinds import RuleKind, SpecContext
from ingate.policy.model import PolicyError
from ingate.policy.schema import Strict

if TYPE_CHECKING:
    from ingate.semantic.concepts import SemanticRule
    from ingate.semantic.groups import Groups

SemanticAction = Literal["resample", "stop"]


# ---- what a policy may write ---------------------------------------------------------------------
class Concept(Strict):
    concept: str = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)
    examples_file: str | None = None

    @field_validator("examples")
    @classmethod
    def _no_empty(cls, v: list[str]) -> list[str]:
        for i, s in enumerate(v):
            if not s.strip():
                raise ValueError(f"example {i} is empty; remove it or write an example sentence")
        return v

    @model_validator(mode="after")
    def _has_examples(self) -> Concept:
        if not self.examples and not self.examples_file:
            raise ValueError(f"concept {self.concept!r} has no examples; give examples: [...] or examples_file")
        return self


class Head(Strict):
    train: str = Field(min_length=1)  # CSV or JSONL of labelled texts, relative to the policy file
    model: Literal["logistic", "mlp"] = "logistic"
    features: Literal["encoder", "engine"] = "encoder"


class Semantic(Strict):
    deny: list[Concept] = Field(default_factory=list)
    allow_only: list[Concept] = Field(default_factory=list)
    head: Head | None = None
    threshold: float | Literal["auto"] | None = None
    max_false_block: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    encoder: str = encoders.DEFAULT  # validated against the registry, ingate.encoders (no torch import)
    window: int = Field(default=2, ge=0, le=16)  # earlier groups the score also sees
    max_group_tokens: int = Field(default=32, ge=4, le=512)
    min_group_tokens: int = Field(default=4, ge=1, le=512)

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        known = encoders.names()
        if v not in known:
            raise ValueError(f"unknown encoder {v!r}; use one of: {', '.join(known)}")
        return v

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and v != v:
            raise ValueError("threshold must be a finite number (or auto)")
        if isinstance(v, float) and not -1.0 <= v <= 1.0:
            raise ValueError(f"threshold {v} is not greater than or equal to -1 and less than or equal to 1: a "
                             "similarity or a probability (or auto)")
        return v

    @model_validator(mode="after")
    def _one_mode(self) -> Semantic:
        if self.min_group_tokens > self.max_group_tokens:
            raise ValueError(f"min_group_tokens ({self.min_group_tokens}) exceeds max_group_tokens "
                             f"({self.max_group_tokens})")
        if self.head is not None:
            return self._head_rule()
        if self.threshold == "auto" or self.max_false_block is not None:
            raise ValueError("threshold: auto and max_false_block choose a trained head's threshold; add "
                             "head: {train: FILE} or set a number (`ingate calibrate` measures one)")
        if self.deny and self.allow_only:
            raise ValueError("deny and allow_only in one rule have no defined meaning; "
                             "write them as two rules (one deny, one allow_only)")
        if not self.deny and not self.allow_only:
            raise ValueError("names no concept; give deny: [...] or allow_only: [...]")
        return self

    def _head_rule(self) -> Semantic:
        if self.deny or self.allow_only:
            raise ValueError("a rule with a head judges by its classifier alone; put the similarity concepts "
                             "(deny/allow_only) in a second semantic rule of the same policy")
        if isinstance(self.threshold, float) and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a head's threshold is a probability in [0, 1] (got {self.threshold}), or auto")
        if self.max_false_block is not None and self.threshold != "auto" and self.threshold is not None:
            raise ValueError("max_false_block only applies to threshold: auto; remove it or the number")
        return self


# ---- the validated rule --------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptSpec:
    name: str
    examples: tuple[str, ...]


@dataclass(frozen=True)
class HeadSpec:
    """A classifier trained on labelled texts at compile time (`semantic.head`)."""

    train: str  # the file, as resolved
    rows: tuple[tuple[str, bool, str | None, str | None], ...]  # (text, admissible, source, prompt)
    model: Literal["logistic", "mlp"]
    features: Literal["encoder", "engine"]


@dataclass(frozen=True)
class SemanticSpec:
    mode: Literal["deny", "allow_only"]  # a head rule is deny: blocked when P(inadmissible) >= threshold
    concepts: tuple[ConceptSpec, ...]
    threshold: float | None  # None: the encoder's uncalibrated default, or for a head threshold: auto
    encoder: str
    window: int
    max_group_tokens: int
    min_group_tokens: int
    max_retries: int
    fallback: str
    refusal: str | None
    apply_to: tuple[str, ...]
    head: HeadSpec | None = None
    max_false_block: float = 0.05  # threshold: auto keeps cross-validated false blocks within this


@dataclass(frozen=True)
class SemanticRuleSpec:
    """Concepts whose similarity to a group of generated tokens (or the prompt) decides."""

    id: str
    action: SemanticAction
    semantic: SemanticSpec
    kind: Literal["semantic"] = field(default="semantic", init=False)


@dataclass
class SemanticPart:
    """A policy's semantic rules compiled (encoders loaded, embeddings and heads ready)."""

    rules: list[SemanticRule]

    @property
    def output(self) -> list[SemanticRule]:
        return [r for r in self.rules if "output" in r.spec.apply_to]

    @property
    def input(self) -> list[SemanticRule]:
        return [r for r in self.rules if "input" in r.spec.apply_to]


# ---- the kind --------------------------------------------------------------------------------------
class SemanticKind(RuleKind):
    name = "semantic"
    block = Semantic
    about = "(concepts)"
    actions = ("resample", "stop")
    options = {
        "max_retries": (int | None, Field(default=None, ge=0, le=100)),
        "fallback": (Literal["stop"] | None, None),
        "refusal": (str | None, Field(default=None, min_length=1)),
        "apply_to": (list[Literal["output", "input"]] | None, Field(default=None, min_length=1)),
    }

    def validate(self, rule: Any) -> None:
        if rule.action is not None and rule.action not in self.actions:
            raise ValueError(f"a semantic rule's action is one of {', '.join(self.actions)} (got {rule.action!r}); "
                             "semantic groups are rolled back and regenerated, or end the stream")
        super().validate(rule)

    def spec(self, rule: Any, ctx: SpecContext) -> SemanticRuleSpec:
        sem = rule.semantic
        mode: Literal["deny", "allow_only"] = "deny" if sem.deny or sem.head else "allow_only"
        concepts: list[ConceptSpec] = []
        for j, c in enumerate(sem.deny or sem.allow_only):
            examples = list(c.examples)
            if c.examples_file:
                examples += ctx.read_lines(c.examples_file, ("semantic", mode, j, "examples_file"), "example")
            concepts.append(ConceptSpec(c.concept, tuple(examples)))
        head = _head_spec(sem.head, ctx) if sem.head is not None else None
        threshold = sem.threshold if isinstance(sem.threshold, float) else None
        spec = SemanticSpec(mode=mode, concepts=tuple(concepts), threshold=threshold, encoder=sem.encoder,
                            window=sem.window, max_group_tokens=sem.max_group_tokens,
                            min_group_tokens=sem.min_group_tokens,
                            max_retries=2 if rule.max_retries is None else rule.max_retries,
                            fallback=rule.fallback or "stop", refusal=rule.refusal,
                            apply_to=tuple(rule.apply_to or ("output",)), head=head,
                            max_false_block=0.05 if sem.max_false_block is None else sem.max_false_block)
        return SemanticRuleSpec(rule.id, cast(SemanticAction, rule.action), spec)

    def compile(self, source: str, specs: list[Any]) -> SemanticPart:
        from ingate.semantic.concepts import compile_semantic  # loads the encoder: torch, only when used

        rules, problems = [], []
        for spec in specs:
            try:
                rules.append(compile_semantic(source, spec))
            except PolicyError as e:
                problems.extend(e.problems)
        if problems:
            raise PolicyError(problems)
        return SemanticPart(rules)

    def checks(self, part: SemanticPart, options: Any) -> list[Check]:
        out = part.output
        return [SemanticCheck(out, options.semantic_lag, options.steer_penalty)] if out else []

    def describe(self, spec: SemanticRuleSpec) -> str:
        sem = spec.semantic
        if sem.head is not None:
            what = (f"semantic head ({sem.head.model}, features {sem.head.features}) trained on "
                    f"{len(sem.head.rows)} labelled texts from {sem.head.train}")
        else:
            what = f"semantic {sem.mode} " + ", ".join(f"{c.name} ({len(c.examples)} examples)" for c in sem.concepts)
        return f"  - {spec.id}: {spec.action} on {what}"

    def report(self, part: SemanticPart) -> list[str]:
        from ingate.gate.explain import head_report

        out = []
        for sr in part.rules:
            spec = sr.spec
            if sr.head is not None:
                out += head_report(sr)
                continue
            thr = (f"threshold {sr.threshold:g}" if sr.calibrated else
                   f"threshold {sr.threshold:g} (no threshold set: the uncalibrated default; "
                   "run `ingate calibrate` to measure one)")
            out.append(f"    {sr.rule_id}/semantic: {sr.encoder.name}, {sr.n_examples} example embeddings "
                       f"({'from the cache' if sr.cache_hit else f'embedded in {sr.embed_s:.1f} s'}), {thr}; "
                       f"groups of {spec.min_group_tokens}-{spec.max_group_tokens} tokens, window {spec.window}, "
                       f"{spec.max_retries} retries then {spec.fallback}, applies to {', '.join(spec.apply_to)}")
        return out

    def text_report(self, part: SemanticPart, text: str) -> list[str]:
        from ingate.semantic.scorer import screen

        v = screen(part.rules, text)
        out = []
        for sc in (v.scores if v is not None else ()):
            verdict = "INADMISSIBLE" if sc.inadmissible else "admissible"
            what = "as P(inadmissible) by its head" if sc.concept == "head" else f"(concept {sc.concept!r})"
            out.append(f"  semantic: rule {sc.rule_id} scored {sc.score:.3f} {what}: {verdict}")
        return out


KIND = SemanticKind()


def _head_spec(h: Head, ctx: SpecContext) -> HeadSpec:
    from ingate.labelled import CalibrationError, read_rows

    path = (ctx.base / h.train) if not Path(h.train).is_absolute() else Path(h.train)
    try:
        rows = read_rows(path)
    except CalibrationError as e:
        raise PolicyError([f"{ctx.at('semantic', 'head', 'train')}: {e}"]) from None
    for r in rows:
        ctx.digest.update(f"{int(r.admissible)}\0{r.source or ''}\0{r.prompt or ''}\0{r.text}\0".encode())
    return HeadSpec(str(path), tuple((r.text, r.admissible, r.source, r.prompt) for r in rows), h.model,
                    h.features)


# ---- the check on one stream -------------------------------------------------------------------------
class SemanticCheck(Check):
    rule_id = "semantic"
    steers = True

    def __init__(self, rules: Sequence[SemanticRule], lag: int, steer_penalty: float):
        from ingate.semantic.groups import Groups

        self.groups: Groups = Groups(rules, lag)
        self.wants_hidden = self.groups.wants_hidden  # a head on the engine's own states
        self.steer_penalty = steer_penalty  # 0: the rolled-back group's first token is banned, nothing more
        self._rejected = (0, 0)  # token span of the last rejected group

    def observe_hidden(self, position: int, feature_id: str, vec: np.ndarray | None) -> None:
        self.groups.observe(position, feature_id, vec)

    def stats(self) -> dict | None:
        return self.groups.stats.to_dict()

    def step(self, s: Stream, data: bytes, p0: int, entropy: float) -> list[Finding] | None:
        self.groups.after_token(s.raw, s.tok_start, data)
        return None

    def hold(self, s: Stream, exact: bool) -> int | None:
        return self.groups.approved  # an open or unjudged group is one more undecided suffix

    def rollback(self, s: Stream, k: int) -> None:
        self.groups.on_rollback(k, s.tok_start)

    def due(self, s: Stream, final: bool, can_rollback: bool) -> Finding | None:
        """The first rejection that is due; admissions on the way are applied. With `final` the open
        group is closed first and every verdict waited for, so every byte is judged before release."""
        gr = self.groups
        if final and gr.open_tok < len(s):
            gr.close(s.raw, s.tok_start)
        while (nv := gr.next_verdict(len(s), block=final)) is not None:
            g, v = nv
            bad = v.rejected if v is not None else None
            if v is None or bad is None:
                gr.admit_head(v)
                continue
            rule = next(r for r in gr.rules if r.rule_id == bad.rule_id)
            g, n = gr.reject_head(v)
            self._rejected = (g.start_tok, g.end_tok)
            return Finding(Kind.REJECT, rule.rule_id, g.start, g.end,
                           f"semantic: group of {g.end_tok - g.start_tok} token(s) {rule.explain(bad)}",
                           action=rule.action or "stop", epilogue=rule.spec.refusal or "", tok=g.start_tok,
                           retry=rule.action == "resample" and n <= rule.spec.max_retries, attempt=n,
                           retries=rule.spec.max_retries, source=self)
        return None

    def regenerating(self, s: Stream) -> None:
        """The gate takes the last rejected group back to regenerate it: steer away from its content."""
        gr = self.groups
        k, end = self._rejected
        gr.stats.retried += 1
        prev = gr.steer[1] if gr.steer and gr.steer[0] == k else None
        gr.steer = (k, _content_tokens(s, s.tokens[k:end], prev))

    def bias(self, logits: np.ndarray, position: int) -> np.ndarray:
        toks = self.groups.steer_at(position)
        if toks is None or not toks.size or not self.steer_penalty:
            return logits
        out = logits.copy()
        out[toks] -= self.steer_penalty
        return out


def _content_tokens(s: Stream, tokens: list[int], prev: np.ndarray | None) -> np.ndarray:
    """Tokens of a rejected attempt that carry content (3+ letters): penalized in its replacement."""
    keep = {t for t in tokens if t >= 0 and sum(c.isalpha() for c in s.token_bytes[t].decode("utf-8", "ignore")) >= 3}
    if prev is not None:
        keep.update(prev.tolist())
    return np.fromiter(keep, dtype=np.int64, count=len(keep))
