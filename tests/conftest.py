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


# Sampling settings a test may search, in order, for a run in which the ungoverned model produces
# what the test governs. Kernels differ between CPUs (AVX-512, AMX, weight layouts) and so do the
# last bits of the logits: one seed may give other text elsewhere, but not all of these.
SEARCH = [(0.0, 0)] + [(0.8, s) for s in range(1, 16)]


def gen_params(max_tokens: int = 96, temperature: float = 0.0, seed: int = 0, top_p: float = 1.0):
    from ingate.drivers.base import GenerationParams

    return GenerationParams(max_tokens=max_tokens,
                            sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed))


def runs_where(runtime, messages, what: str, produced, max_tokens: int = 96, want: int = 1,
               search=SEARCH, must: bool = True) -> list[tuple]:
    """Up to `want` (params, ungoverned result) pairs from `search` whose ungoverned text satisfies
    `produced`. A test that finds nothing to govern has tested nothing, so it fails, never passes,
    when no setting produces `what` (`must=False`: the caller counts what was found across several
    searches and fails itself). Results are cached on the runtime per (messages, what, tokens)."""
    from ingate.policy import NONE_POLICY

    cache = runtime.__dict__.setdefault("_runs_where", {})
    key = (repr(messages), what, max_tokens)
    found, tried = cache.setdefault(key, ([], set()))
    for temperature, seed in search:
        if len(found) >= want:
            break
        if (temperature, seed) in tried:
            continue
        tried.add((temperature, seed))
        p = gen_params(max_tokens, temperature, seed)
        res = runtime.run(messages, NONE_POLICY, p)
        if produced(res.text):
            found.append((p, res))
    if not found and must:
        pytest.fail(f"at none of {len(search)} sampling settings did the ungoverned model produce {what}: "
                    "nothing to govern, so nothing was tested")
    return found[:want]


def run_where(runtime, messages, what: str, produced, max_tokens: int = 96):
    return runs_where(runtime, messages, what, produced, max_tokens)[0]


PHONE = "415-555-0132"


@pytest.fixture(scope="session")
def phone_run(runtime):
    """Sampling at which the ungoverned model repeats the PII prompt's phone number. The server and
    the CLI run the same engine (same layout, bit-identical logits), so they write the same there."""
    return run_where(runtime, user(PII_PROMPT), repr(PHONE), lambda t: PHONE in t, 64)


@pytest.fixture(scope="session")
def eiffel_run(runtime):
    """Sampling at which the ungoverned model names the Eiffel tower in its paragraph about Paris."""
    return run_where(runtime, user(PARIS_PROMPT), "'Eiffel'", lambda t: "eiffel" in t.lower(), 160)


def api_sampling(params) -> dict:
    """The same sampling as OpenAI request fields."""
    return {"temperature": params.sampling.temperature, "seed": params.sampling.seed,
            "max_tokens": params.max_tokens}


def cli_sampling(params) -> list[str]:
    """The same sampling as `ingate generate` flags."""
    return ["--temperature", str(params.sampling.temperature), "--seed", str(params.sampling.seed),
            "--max-tokens", str(params.max_tokens)]


def random_split(draw, data: bytes) -> list[bytes]:
    """A random tokenization of `data` for hypothesis: cut points anywhere, even inside a UTF-8
    character (`draw` is a composite strategy's draw)."""
    from hypothesis import strategies as st

    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=len(data)))))
    toks, prev = [], 0
    for c in [*cuts, len(data)]:
        if c > prev:
            toks.append(data[prev:c])
            prev = c
    return toks


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
