"""The sampler's entropy and narrowing, by property, against a plain numpy reference."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import sampled_distribution, top_entropy
from ingate.sampling import Sampler, SamplingParams, _narrow

V = 3000


sampling = st.sampled_from([SamplingParams(), SamplingParams(temperature=1.0), SamplingParams(temperature=0.7),
                            SamplingParams(temperature=1.3, top_p=0.9), SamplingParams(temperature=0.8, top_p=0.5)])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), sampling, st.floats(0.5, 8.0), st.floats(0.05, 3.0), st.booleans())
def test_entropy_and_narrowing_match_thesampled_distribution(seed, sp, scale, bound, ban):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(V) * scale).astype(np.float32)
    banned = rng.choice(V, size=50, replace=False) if ban else None
    s = Sampler(SamplingParams(sp.temperature, sp.top_p, sp.top_k, seed), measure=True)
    tok = s.sample(logits, banned)
    h, order = sampled_distribution(logits, sp, banned)
    assert abs(s.entropy - h) < 1e-6 * max(1.0, h)
    assert banned is None or tok not in set(banned.tolist())
    # narrowing: same draw, token within a top set whose entropy is within the bound
    n = Sampler(SamplingParams(sp.temperature, sp.top_p, sp.top_k, seed), measure=True)
    tok_n = n.sample(logits, banned, bound=bound)
    if h <= bound:
        assert n.narrowed == 0 and tok_n == tok  # transparent below the bound
    elif sp.temperature > 0:
        x = logits.astype(np.float64).copy()
        if banned is not None:
            x[banned] = -np.inf
        p = np.exp((x - x.max()) / sp.temperature)
        rank = int(np.nonzero(order == tok_n)[0][0])
        assert rank < n.narrowed
        assert top_entropy(p, order, n.narrowed) <= bound + 1e-9


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 6.0))
def test_narrow_returns_the_largest_top_set_within_the_bound(seed, bound):
    rng = np.random.default_rng(seed)
    w = np.exp(rng.standard_normal(2500) * rng.uniform(0.5, 6.0))
    keep = _narrow(w, bound)
    order = np.argsort(-w, kind="stable")
    assert sorted(keep.tolist()) == sorted(order[: keep.shape[0]].tolist())  # a top set
    hs = [top_entropy(w, order, k) for k in range(1, w.shape[0] + 1)]
    within = [k for k, h in enumerate(hs, start=1) if h <= bound + 1e-9]
    assert keep.shape[0] == max(within)
