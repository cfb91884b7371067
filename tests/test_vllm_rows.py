"""The batch masks behind the vLLM plugin (`ingate.vllm.rows`), over the embedded model's real vocabulary.

The plugin itself runs against a real vLLM in tests/vllm (make test-vllm). These tests drive the
same rows the way vLLM's BatchUpdate and output-token lists do (they are plain lists that vLLM
appends to), and hold them to the gate: a row's mask is exactly the MASK_FIRST gate's mask for the
policy's prevent and stop rules, after any tokenization of any text.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import policy
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate, Mode, Verdict
from ingate.policy import PolicyError
from ingate.upstream.body import PREFIX_CHARS, Bodies
from ingate.upstream.config import INGATE_MASK, upstream
from ingate.vllm.rows import (
    POLICIES_ENV,
    Batch,
    PolicySet,
    RequestError,
    engine_policy,
    load_policies,
)

BANS = policy("""
version: 1
name: bans
rules:
  - id: tower
    forbid: {phrases: [Eiffel, Louvre Museum]}
    action: prevent
  - id: secret
    forbid: {phrases: [project bluebird]}
    action: stop
  - id: pii
    forbid: {patterns: [email]}
    action: redact
""")
PHONES = policy("""
version: 1
name: phones
rules:
  - id: phone
    forbid: {patterns: [phone]}
    action: prevent
""")


@pytest.fixture(scope="module")
def pset(runtime):
    return PolicySet({"bans": BANS, "phones": PHONES}, runtime.table)


def _gate_mask(runtime, pol, tokens: list[int]) -> np.ndarray | None:
    """The MASK_FIRST gate's mask after `tokens` (None when a token is refused on the way)."""
    gate = Gate(compile_policy(engine_policy(pol)), runtime.table, mode=Mode.MASK_FIRST)
    for t in tokens:
        if gate.admit(t).verdict is not Verdict.ADMIT:
            return None
    return np.flatnonzero(gate.mask())


TEXTS = ["The Eiffel Tower", "the eiffel", "Visit the Louvre Museum and project bluebird", "Call 415-555-01",
         "EIFF", "an Eif", "Louvre Muse", "project blue", "(415) 555", "plain words only"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(TEXTS), st.integers(0, 40), st.sampled_from(["bans", "phones"]))
def test_a_rows_mask_is_the_mask_first_gates(runtime, pset, text, cut, name):
    """After any prefix of a real tokenization, the row forbids exactly what the gate forbids."""
    tokens = runtime.engine.tokenize(text)[:cut]
    want = _gate_mask(runtime, {"bans": BANS, "phones": PHONES}[name], tokens)
    if want is None:
        return  # the gate refused a token on the way: a row never reaches here either (it was masked)
    out: list[int] = []
    row = pset.row(name, out)
    for t in tokens:  # vLLM appends one token per step; the row catches up when asked
        out.append(t)
        row.catch_up()
    assert np.array_equal(row.forbidden(), want)


def test_the_mask_prevents_the_completing_token(runtime, pset):
    out = runtime.engine.tokenize("The Eif")
    row = pset.row("bans", list(out))
    row.catch_up()
    forbidden = set(row.forbidden().tolist())
    completing = [t for t in range(runtime.table.size) if runtime.table.token_bytes[t].lower().startswith(b"fel")]
    assert completing and set(completing) <= forbidden
    assert runtime.engine.tokenize(" Tower")[0] not in forbidden


def test_stop_rules_are_masked_and_redact_rules_are_left_to_the_front(runtime, pset):
    eng = engine_policy(BANS)
    assert [r.id for r in eng.rules] == ["tower", "secret"] and {r.action for r in eng.rules} == {"prevent"}
    row = pset.row("bans", runtime.engine.tokenize("project blue"))
    row.catch_up()
    bird = runtime.engine.tokenize("bird")[0]
    assert bird in set(row.forbidden().tolist())


def test_a_prefix_primes_the_automata(runtime, pset):
    """A continuation after the front server's withdrawal: the text before it is in the prompt."""
    fel = [t for t in range(runtime.table.size) if runtime.table.token_bytes[t] == b"fel"]
    assert fel
    primed = pset.row("bans", [], prefix="The Eif")
    cold = pset.row("bans", [])
    assert fel[0] in set(primed.forbidden().tolist()) and fel[0] not in set(cold.forbidden().tolist())


def test_placeholders_wait_and_dropped_tokens_restart(runtime, pset):
    toks = runtime.engine.tokenize("The Eif")
    out = toks[:-1] + [-1]  # async scheduling: the newest id is not known yet
    row = pset.row("bans", out)
    row.catch_up()
    assert row.seen == len(toks) - 1
    out[-1] = toks[-1]
    row.catch_up()
    full = row.forbidden()
    del out[1:]  # the engine dropped tokens (a KV-load failure): recomputed from the start
    row.catch_up()
    assert row.seen == 1 and not np.array_equal(row.forbidden(), full)


def test_the_batch_follows_vllms_updates(runtime, pset):
    b = Batch(pset)
    tok = runtime.engine.tokenize
    outs = {0: tok("The Eif"), 1: tok("The Eif"), 2: tok("Call 415-555-013"), 3: []}
    b.add(0, {"ingate_policy": "bans"}, outs[0])
    b.add(1, None, outs[1])  # no policy: untouched
    b.add(2, {"ingate_policy": "phones"}, outs[2])
    rows, ids = b.masks()
    assert set(rows.tolist()) == {0, 2} and len(rows) == len(ids)
    per = {r: set(ids[rows == r].tolist()) for r in (0, 2)}
    assert per[0] != per[2]
    b.move(0, 3, swap=False)  # one-way move
    b.move(2, 3, swap=True)  # swap
    rows, ids = b.masks()
    assert {r: set(ids[rows == r].tolist()) for r in set(rows.tolist())} == {2: per[0], 3: per[2]}
    b.add(2, {}, [])  # a request without a policy replaces the row at 2
    b.remove(3)
    assert b.masks()[0].size == 0


def test_a_bad_request_inside_the_engine_fails_closed_without_stopping_the_batch(runtime):
    """Admission refuses bad arguments (validate_params, a 400). Should one reach the engine anyway
    (the policy file edited between the two loads), its row may only end, and the others go on."""
    eos = sorted(runtime.engine.eog_tokens())
    ps = PolicySet({"bans": BANS}, runtime.table, eos=eos)
    b = Batch(ps)
    b.add(0, {"ingate_policy": "bans", "ingate_policy_digest": "stale"}, [])
    b.add(1, {"ingate_policy": "bans"}, runtime.engine.tokenize("The Eif"))
    rows, ids = b.masks()
    refused = set(ids[rows == 0].tolist())
    assert refused == set(range(runtime.table.size)) - set(eos) and eos
    assert 0 < len(ids[rows == 1]) < 1000  # the healthy row keeps its own, small mask


def test_bad_arguments_say_what_to_fix(pset):
    with pytest.raises(RequestError, match="unknown ingate policy 'nope'; loaded: bans, phones"):
        pset.check({"ingate_policy": "nope"})
    with pytest.raises(RequestError, match="differs between the front server and vLLM"):
        pset.check({"ingate_policy": "bans", "ingate_policy_digest": "0" * 64})
    with pytest.raises(RequestError, match="needs vllm_xargs.ingate_policy"):
        pset.check({"ingate_prefix": "x"})
    with pytest.raises(RequestError, match="must be a string"):
        pset.check({"ingate_policy": "bans", "ingate_prefix": 3})
    assert pset.check({"ingate_policy": "bans", "ingate_policy_digest": BANS.digest}) == "bans"
    assert pset.check(None) is None and pset.check({"other": 1}) is None


def test_policies_come_from_the_environment(tmp_path, monkeypatch):
    a = tmp_path / "a.yaml"
    a.write_text("version: 1\nname: default\nrules: []\n")
    assert load_policies(None) == {}
    assert set(load_policies(" default , ")) == {"default"}
    with pytest.raises(PolicyError, match="two different policies are named 'default'"):
        load_policies(f"default,{a}")
    monkeypatch.setenv(POLICIES_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(PolicyError, match="does not exist"):
        PolicySet.from_env([b"a"])


def test_a_state_miss_is_computed_once_and_shared(runtime):
    ps = PolicySet({"bans": BANS}, runtime.table)
    a, b = ps.row("bans", runtime.engine.tokenize("an Eif")), ps.row("bans", runtime.engine.tokenize("an Eif"))
    a.catch_up(), b.catch_up()
    before = ps.misses
    assert np.array_equal(a.forbidden(), b.forbidden())
    assert ps.misses == before + 1  # the second row found the first's mask cached


def test_the_combined_mask_cache_is_bounded(runtime):
    """A long-running engine meets ever new combinations of several detectors' states: the combined
    cache starts again past its bound, and the masks stay what they were."""
    ps = PolicySet({"bans": BANS}, runtime.table)
    ps.max_combined = 3
    rows = [ps.row("bans", runtime.engine.tokenize(t)) for t in TEXTS]
    want = []
    for r in rows:
        r.catch_up()
        want.append(r.forbidden())
    assert len(ps.by_name["bans"].masks._combined) <= 3
    assert all(np.array_equal(r.forbidden(), w) for r, w in zip(rows, want, strict=True))


def test_the_front_server_names_the_policy_to_vllm():
    from ingate.core import Request
    from ingate.drivers.base import GenerationParams
    from ingate.policy import NONE_POLICY

    spec = upstream("m", "http://127.0.0.1:1/v1", kind="vllm", capabilities=["+ingate_mask"])
    assert spec.can(INGATE_MASK) and spec.can("continue_final_message")  # "+" adds to the preset
    msgs = [{"role": "user", "content": "hi"}]
    bodies = Bodies(spec, Request(msgs, BANS, GenerationParams()), None, logprobs=False)
    _, first = bodies.build("", 0, 0)
    assert first["vllm_xargs"] == {"ingate_policy": "bans", "ingate_policy_digest": BANS.digest}
    _, cont = bodies.build("x" * 2000 + "The Eif", 1, 5)
    assert cont["vllm_xargs"]["ingate_prefix"] == ("x" * 2000 + "The Eif")[-PREFIX_CHARS:]
    none = Bodies(spec, Request(msgs, NONE_POLICY, GenerationParams()), None, logprobs=False)
    assert "vllm_xargs" not in none.build("", 0, 0)[1]  # nothing the engine could mask
    plain = Bodies(upstream("m", "http://127.0.0.1:1/v1", kind="vllm"), Request(msgs, BANS, GenerationParams()),
                   None, logprobs=False)
    assert "vllm_xargs" not in plain.build("", 0, 0)[1]  # a vLLM without the plugin would refuse the field
