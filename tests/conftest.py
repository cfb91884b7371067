"""Shared fixtures. The model is the real embedded SmolLM2-135M through llama.cpp: never mocked."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ingate.policy import parse_policy
from ingate.sampling import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
INGATE = str(Path(sys.executable).with_name("ingate"))
PII_PROMPT = "Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132."
PARIS_PROMPT = "Write a short paragraph about Paris and its famous tower."


@pytest.fixture(scope="session")
def runtime(tmp_path_factory):
    from ingate.runtime import Runtime

    return Runtime.load(audit=tmp_path_factory.mktemp("audit") / "audit.sqlite3")


def policy(yaml_text: str, name: str = "test.yaml"):
    return parse_policy(yaml_text, source=name)


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def explosives_policy(apply_to: str = "[output]", retries: int = 2):
    """examples/no-explosives.yaml, by default on the output side only (no input refusal)."""
    text = (ROOT / "examples" / "no-explosives.yaml").read_text()
    text = text.replace("apply_to: [output, input]", f"apply_to: {apply_to}")
    text = text.replace("max_retries: 2", f"max_retries: {retries}")
    return parse_policy(text, source="no-explosives.yaml", base=ROOT / "examples")


def sampled_distribution(logits: np.ndarray, sp: SamplingParams,
                         banned: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Reference for the sampler, with a plain sort: the entropy of the distribution it samples
    from (masks, temperature; T=1 for greedy; top-p) and its token order, most probable first."""
    x = logits.astype(np.float64).copy()
    if banned is not None:
        x[banned] = -np.inf
    t = sp.temperature if sp.temperature > 0 else 1.0
    p = np.exp((x - x.max()) / t)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    if sp.top_p < 1.0 and sp.temperature > 0:
        keep = int(np.searchsorted(np.cumsum(ps), sp.top_p)) + 1
        order, ps = order[:keep], ps[:keep] / ps[:keep].sum()
    nz = ps[ps > 0]
    return float(-(nz * np.log(nz)).sum()), order


def top_entropy(p: np.ndarray, order: np.ndarray, k: int) -> float:
    """Entropy of the k most probable tokens (by `order`), renormalized."""
    q = p[order[:k]] / p[order[:k]].sum()
    q = q[q > 0]
    return float(-(q * np.log(q)).sum())
