"""Compiled semantic rules: concept example embeddings and the score of a text against them.

A rule's score for a text is its highest cosine similarity to any example of any of its
concepts. A `deny` rule finds a text inadmissible when that score reaches the threshold; an
`allow_only` rule when it stays below it. Group texts are encoded once and scored against
every semantic rule that uses the same encoder.

A rule with a trained head (`semantic.head`) scores a text by the head's P(inadmissible) instead,
over the features it was trained on (the encoder's embedding, or the generating model's hidden
state), and finds it inadmissible when that reaches the threshold (`auto`: chosen from the head's
cross-validation under `max_false_block`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ingate import encoders
from ingate.policy import PolicyError
from ingate.semantic.cache import cached_embeddings
from ingate.semantic.encoder import Encoder, EncoderUnavailable, get_encoder
from ingate.semantic.head import Head, HeadError, HeadMetrics, trained_head

if TYPE_CHECKING:  # the spec is the semantic kind's (ingate.gate.kinds.semantic), which compiles through here
    from ingate.gate.kinds.semantic import SemanticRuleSpec, SemanticSpec

# Used when a rule sets no threshold; `ingate calibrate` measures a better one on labelled data.
DEFAULT_THRESHOLD = {"deny": 0.45, "allow_only": 0.30}


@dataclass(frozen=True)
class Score:
    rule_id: str
    score: float  # highest similarity over every example of every concept
    concept: str  # the concept that gave it
    inadmissible: bool
    threshold: float  # the judging rule's (an engine head's encoder twin has its own)


class SemanticRule:
    def __init__(self, rule: SemanticRuleSpec, encoder: Encoder, source: str, fallback_note: str = ""):
        spec = rule.semantic
        self.rule_id = rule.id
        self.action = rule.action
        self.spec: SemanticSpec = spec
        self.encoder = encoder
        self.fallback_note = fallback_note  # why the head's features are not the ones the policy asked for
        self.fallback: SemanticRule | None = None  # features: engine: the encoder head, for text-only drivers
        self.head: Head | None = None
        self.head_metrics: HeadMetrics | None = None
        self.threshold = spec.threshold if spec.threshold is not None else DEFAULT_THRESHOLD[spec.mode]
        self.calibrated = spec.threshold is not None
        if spec.head is not None:
            self._train_head(source)
            return
        texts: list[str] = []
        owner: list[int] = []
        for ci, c in enumerate(spec.concepts):
            texts.extend(c.examples)
            owner.extend([ci] * len(c.examples))
        t = time.perf_counter()
        self.examples, self.cache_hit = cached_embeddings(encoder.name, encoder.version, encoder.dim, texts,
                                                          encoder.encode)
        self.embed_s = time.perf_counter() - t
        self.owner = np.asarray(owner, dtype=np.int64)
        self.n_examples = len(texts)

    def _train_head(self, source: str) -> None:
        spec = self.spec.head
        assert spec is not None
        t = time.perf_counter()
        try:
            self.head = trained_head(spec.model, self.encoder, spec.rows)
        except HeadError as e:
            raise PolicyError([f"{source}, rule {self.rule_id!r}, field semantic.head.train ({spec.train}): {e}"]
                              ) from None
        self.embed_s = time.perf_counter() - t
        self.cache_hit = self.head.cache_hit
        met = True
        if self.spec.threshold is None:  # threshold: auto (the default for a head)
            self.threshold, met = self.head.choose_threshold(self.spec.max_false_block)
            self.calibrated = True
        self.head_metrics = self.head.metrics(self.threshold, met)
        self.examples = np.zeros((0, self.encoder.dim), dtype=np.float32)
        self.owner = np.zeros(0, dtype=np.int64)
        self.n_examples = 0

    @property
    def mode(self) -> str:
        return self.spec.mode

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the best similarity and the index of the concept that gave it (a head's
        P(inadmissible), concept 0)."""
        if self.head is not None:
            return self.head.prob(vectors), np.zeros(len(vectors), dtype=np.int64)
        sims = vectors @ self.examples.T  # (texts, examples)
        best = sims.argmax(axis=1)
        return sims[np.arange(sims.shape[0]), best], self.owner[best]

    def explain(self, s: Score) -> str:
        """'scored 0.612 >= 0.45 (concept 'explosives')': the audit's words for a rejection."""
        if self.head is not None:
            twin = "" if self.fallback is None or s.threshold == self.threshold else " (encoder twin: no engine states)"
            return f"head P(inadmissible) {s.score:.3f} >= {s.threshold:g}{twin}"
        if self.mode == "deny":
            return f"scored {s.score:.3f} >= {self.threshold:g} (concept {s.concept!r})"
        return f"scored {s.score:.3f} < {self.threshold:g} (best allowed concept {s.concept!r})"

    def judge(self, vectors: np.ndarray) -> Score:
        """One verdict over several views of the same text (the group alone, with its window).

        deny: the most similar view decides (content split across sentences is still caught);
        allow_only: the text is on topic when any view is.
        """
        s, c = self.scores(vectors)
        i = int(s.argmax())
        score = float(s[i])
        bad = score >= self.threshold if self.mode == "deny" else score < self.threshold
        name = "head" if self.head is not None else self.spec.concepts[int(c[i])].name
        return Score(self.rule_id, score, name, bad, self.threshold)

    def judged_by(self, engine_feature: str | None) -> SemanticRule:
        """The rule that judges a group: this one, or for an engine head without the engine's hidden
        states of its own model (a remote stream, another GGUF) its encoder twin."""
        if self.fallback is None or engine_feature == self.encoder.version:
            return self
        return self.fallback


def compile_semantic(source: str, rule: SemanticRuleSpec) -> SemanticRule:
    head = rule.semantic.head
    try:
        enc = get_encoder(rule.semantic.encoder)
    except EncoderUnavailable as e:
        raise PolicyError([f"{source}, rule {rule.id!r}, field semantic.encoder: {e}"]) from None
    if head is None or head.features != "engine":
        return SemanticRule(rule, enc, source)
    fallback = SemanticRule(rule, enc, source)
    try:
        engine = get_encoder(encoders.ENGINE)
    except EncoderUnavailable as e:
        fallback.fallback_note = f"features: engine unavailable here ({e}); the head uses the encoder {enc.name}"
        return fallback
    primary = SemanticRule(rule, engine, source)
    primary.fallback = fallback
    return primary
