"""Compiled semantic rules: concept example embeddings and the score of a text against them.

A rule's score for a text is its highest cosine similarity to any example of any of its
concepts. A `deny` rule finds a text inadmissible when that score reaches the threshold; an
`allow_only` rule when it stays below it. Group texts are encoded once and scored against
every semantic rule that uses the same encoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ingate.policy import PolicyError, SemanticRuleSpec, SemanticSpec
from ingate.semantic.cache import cached_embeddings
from ingate.semantic.encoder import Encoder, EncoderUnavailable, get_encoder

# Used when a rule sets no threshold; `ingate calibrate` measures a better one on labelled data.
DEFAULT_THRESHOLD = {"deny": 0.45, "allow_only": 0.30}


@dataclass(frozen=True)
class Score:
    rule_id: str
    score: float  # highest similarity over every example of every concept
    concept: str  # the concept that gave it
    inadmissible: bool


class SemanticRule:
    def __init__(self, rule: SemanticRuleSpec, encoder: Encoder, source: str):
        spec = rule.semantic
        self.rule_id = rule.id
        self.action = rule.action
        self.spec: SemanticSpec = spec
        self.encoder = encoder
        self.threshold = spec.threshold if spec.threshold is not None else DEFAULT_THRESHOLD[spec.mode]
        self.calibrated = spec.threshold is not None
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

    @property
    def mode(self) -> str:
        return self.spec.mode

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per text: the best similarity and the index of the concept that gave it."""
        sims = vectors @ self.examples.T  # (texts, examples)
        best = sims.argmax(axis=1)
        return sims[np.arange(sims.shape[0]), best], self.owner[best]

    def explain(self, s: Score) -> str:
        """'scored 0.612 >= 0.45 (concept 'explosives')': the audit's words for a rejection."""
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
        return Score(self.rule_id, score, self.spec.concepts[int(c[i])].name, bad)


def compile_semantic(source: str, rule: SemanticRuleSpec) -> SemanticRule:
    try:
        enc = get_encoder(rule.semantic.encoder)
    except EncoderUnavailable as e:
        raise PolicyError([f"{source}, rule {rule.id!r}, field semantic.encoder: {e}"]) from None
    return SemanticRule(rule, enc, source)
