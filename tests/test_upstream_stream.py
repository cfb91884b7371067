"""An upstream's stream, however it is split: the SSE reader, the deltas, and the governed text.

The release property runs the whole remote path (HTTP on loopback, SSE, the TEXT gate, a
continuation after a withdrawal) against `ScriptedUpstream`, a test double that replays fixed text
split where hypothesis says (tests/upstreams.py says why no real server can do that). The rest of
the upstream tests run against a real server: tests/test_upstream.py.
"""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import policy, random_split, user
from ingate.core import Request
from ingate.drivers.base import GenerationParams
from ingate.gate.compile import compile_policy
from ingate.sampling import SamplingParams
from ingate.upstream.body import CONTINUE_INSTRUCTION
from ingate.upstream.config import ModelsError, load_models, upstream
from ingate.upstream.core import UpstreamCore
from ingate.upstream.deltas import deltas, top_k_entropy
from ingate.upstream.sse import SSEError, events
from upstreams import ScriptedUpstream

GOVERN = policy("""
version: 1
name: upstream-props
max_rollbacks: 4
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: prevent
  - id: pii
    forbid: {patterns: [phone]}
    action: redact
""")
FIRST = "Paris has the Eiffel Tower. Call 415-555-0132 or write to me, it is 1 km tall."
AGAIN = "famous iron tower. Call 415-555-0132 today."


# ---- SSE ---------------------------------------------------------------------------------------
def _sse(datas: list[str], eol: str) -> bytes:
    return "".join(f": ping{eol}event: message{eol}" + "".join(f"data: {ln}{eol}" for ln in d.split("\n")) + eol
                   for d in datas).encode()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=30).filter(lambda t: "\r" not in t and "\n" not in t
                                                         and not t.startswith(" ")), min_size=1, max_size=6),
       st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_sse_events_are_the_same_however_the_bytes_are_split(datas, eol, data):
    raw = _sse(datas, eol)
    assert list(events(random_split(data.draw, raw))) == datas


def test_sse_rejects_bytes_that_are_not_utf8():
    with pytest.raises(SSEError, match="not UTF-8"):
        list(events([b"data: \xff\xfe\n\n"]))


def test_a_last_event_without_its_blank_line_is_kept():
    assert list(events([b"data: a\n\ndata: [DONE]\n"])) == ["a", "[DONE]"]


# ---- deltas and entropy ----------------------------------------------------------------------------
def test_top_k_entropy_is_exact_when_the_top_k_hold_all_the_mass_and_a_lower_bound_otherwise():
    p = [0.5, 0.25, 0.25]
    exact = -sum(x * math.log(x) for x in p)
    assert top_k_entropy([math.log(x) for x in p]) == pytest.approx(exact)
    full = [0.4, 0.3] + [0.3 / 30] * 30
    h = -sum(x * math.log(x) for x in full)
    assert top_k_entropy([math.log(x) for x in full[:2]]) < h
    assert math.isnan(top_k_entropy([]))


def test_deltas_split_per_token_only_when_the_logprobs_spell_the_text():
    lp = {"content": [{"token": "Hel", "logprob": -0.1, "top_logprobs": [{"token": "Hel", "logprob": -0.1}]},
                      {"token": "lo", "logprob": -0.5, "top_logprobs": [{"token": "lo", "logprob": -0.5},
                                                                        {"token": "p", "logprob": -1.5}]}]}
    chunk = {"choices": [{"delta": {"content": "Hello"}, "logprobs": lp}]}
    got = list(deltas([chunk], measured=True))
    assert [d.text for d in got] == ["Hel", "lo"] and all(not math.isnan(d.entropy) for d in got)
    chunk["choices"][0]["delta"]["content"] = "Hello!"  # the logprobs do not spell it: one delta, no entropy
    (one,) = list(deltas([chunk], measured=True))
    assert one.text == "Hello!" and math.isnan(one.entropy)
    assert [d.text for d in deltas([{"choices": [{"text": "raw"}]}, {"choices": []}], measured=False)] == ["raw"]


# ---- the models file --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, fix", [
    ("models: []", "expected a mapping `models:`"),
    ("models: {a: {base_url: ftp://x}}", "must start with http:// or https://"),
    ("models: {a: {base_url: 'http://x/v1', kind: tgi}}", "kind 'tgi' is not one of"),
    ("models: {a: {base_url: 'http://x/v1', capabilities: [mind_reading]}}", "unknown capability 'mind_reading'"),
    ("models: {a: {base_url: 'http://x/v1', api_key_env: INGATE_TEST_NO_SUCH_VAR}}",
     "INGATE_TEST_NO_SUCH_VAR (api_key_env) is not set"),
    ("models: {a: {base_url: 'http://x/v1', timeout_s: 0}}", "timeout_s must be a positive number"),
    ("models: {a: {base_url: 'http://x/v1', api_key: sk-123}}", "unknown field 'api_key'"),
    ("models: {a: {gguf: embedded, base_url: 'http://x'}}", "a local model takes only `gguf`"),
    ("models: {a: {model: m}}", "give `gguf: embedded|PATH` (a local model) or `base_url`"),
    ("models: [", "not valid YAML"),
])
def test_a_bad_models_file_says_what_to_fix(tmp_path, text, fix):
    f = tmp_path / "models.yaml"
    f.write_text(text)
    with pytest.raises(ModelsError, match=fix.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")):
        load_models(f)


def test_serve_with_a_bad_models_file_exits_with_one_line_that_says_what_to_fix(tmp_path):
    import subprocess

    from conftest import INGATE

    f = tmp_path / "models.yaml"
    f.write_text("models: {gpt: {base_url: 'https://api.openai.com/v1', api_key_env: INGATE_TEST_NO_SUCH_VAR}}\n")
    r = subprocess.run([INGATE, "serve", "--models", str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "model 'gpt': the environment variable INGATE_TEST_NO_SUCH_VAR (api_key_env) is not set" in r.stderr


def test_a_tokenizer_that_is_not_a_gguf_says_so_at_start(tmp_path):
    bad = tmp_path / "vocab.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ModelsError, match="cannot load the tokenizer"):
        UpstreamCore(upstream("m", "http://127.0.0.1:9/v1", tokenizer=str(bad)), None)


def test_a_models_file_lists_local_and_upstream_models_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("INGATE_TEST_KEY", "sk-test")
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  local: {gguf: embedded}\n  remote:\n    kind: vllm\n    base_url: http://h:8000/v1/\n"
                 "    model: meta/llama\n    api_key_env: INGATE_TEST_KEY\n")
    local, remote = load_models(f)
    assert local.name == "local" and local.gguf is None
    assert remote.base_url == "http://h:8000/v1" and remote.model == "meta/llama" and remote.api_key() == "sk-test"
    assert remote.can("continue_final_message") and remote.can("logit_bias")


# ---- the governed text, however the upstream splits it ----------------------------------------------------
@pytest.fixture(scope="module")
def scripted():
    up = ScriptedUpstream()
    core = UpstreamCore(upstream("scripted", up.url, "m", retries=0, timeout_s=20), None)
    yield up, core
    core.close()
    up.close()


def _split_text(draw, text: str) -> list[str]:
    """Deltas of `text` cut anywhere between characters (an upstream never splits a character)."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(text) - 1)), max_size=len(text)))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True) if b > a]


def _governed(up, core, first: list[str], again: list[str], cuts: list[list[int]]):
    up.script([first, again], cuts)
    released: list[str] = []
    params = GenerationParams(max_tokens=200, sampling=SamplingParams(temperature=0.0, seed=3))
    res = core.run(Request(user("Tell me about Paris."), GOVERN, params), on_text=released.append)
    return res, released


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_client_gets_the_same_governed_text_however_the_upstream_splits_its_stream(scripted, data):
    up, core = scripted
    reference, _ = _governed(up, core, [FIRST], [AGAIN], [[], []])
    first, again = _split_text(data.draw, FIRST), _split_text(data.draw, AGAIN)
    n = len("".join(f"data: {json.dumps(d)}" for d in first))  # about the SSE body's size: cut anywhere in it
    cuts = [sorted(data.draw(st.lists(st.integers(1, n), max_size=40))) for _ in range(2)]
    res, released = _governed(up, core, first, again, cuts)
    assert res.text == reference.text == "".join(released)
    assert "Eiffel" not in res.text and "415-555-0132" not in res.text  # not a byte of either
    for i in range(len(released)):  # nor at any moment: every prefix the client saw is clean
        seen = "".join(released[:i + 1])
        assert "Eiffel" not in seen and "415" not in seen
    assert res.text.startswith("Paris has the famous iron tower.") and "[PHONE]" in res.text
    assert [d.action for d in res.decisions].count("prevent") == 1
    # the continuation asked the upstream to go on from the admitted text, not from the start
    cont = up.bodies[1]["messages"]
    assert cont[-2] == {"role": "assistant", "content": "Paris has the "} and cont[-1]["content"] == \
        CONTINUE_INSTRUCTION
    assert all(not d.matches(res.text.encode()) for d in compile_policy(GOVERN).detectors if d)


def test_a_worker_with_more_threads_than_queue_slots_drains_at_once():
    """An upstream's max_concurrency (worker threads) can exceed --max-queue: shutdown must still stop
    every thread, not wait out the drain timeout for the ones whose stop mark found no room."""
    from ingate.worker import Worker

    w = Worker(core=None, max_queue=4, threads=64)  # no job is submitted: the core is never called
    t0 = time.monotonic()
    assert w.drain(10.0)
    assert time.monotonic() - t0 < 5.0
