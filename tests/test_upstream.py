"""Governing a real upstream: llama-cpp-python's own OpenAI-compatible server over the embedded model,
on loopback, with a fault-injecting proxy between ingate and it (tests/upstreams.py).

The upstream caches prompt prefixes, so the same seed can write other text from one request to the
next (and kernels differ between CPUs): each test searches sampling settings for runs in which the
ungoverned upstream writes what the test governs, checks the guarantee on every governed run, and
fails when no run had anything to govern.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import replace

import httpx
import pytest
import uvicorn
from openai import OpenAI

from conftest import PARIS_PROMPT, PHONE, PII_PROMPT, SEARCH, explosives_policy, gen_params, policy, user
from ingate.core import Request
from ingate.drivers.base import GenerationFailed
from ingate.gate.compile import compile_policy
from ingate.policy import NONE_POLICY
from ingate.server import ServerConfig, create_app
from ingate.store.audit import SqliteAudit as AuditLog
from ingate.upstream.client import UpstreamError, UpstreamProtocolError, UpstreamRateLimited, UpstreamTimeout
from ingate.upstream.config import upstream
from ingate.upstream.core import UpstreamCore
from ingate.upstream.vocab import load_vocab
from test_modes import NO_EIFFEL
from test_modes import PHONE_REDACT as PHONES
from upstreams import FaultProxy, free_port, llama_server

pytestmark = pytest.mark.slow

STOP_EIFFEL = policy("""
version: 1
name: stop-eiffel
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: stop
""")
PHONES_ESCALATE = policy("""
version: 1
name: phones-escalate
session: {escalate_after: 1, refusal: "Not after that."}
rules:
  - id: pii
    forbid: {patterns: [phone]}
    action: redact
""")
RUNS = 3  # governed runs per test, at settings where the ungoverned upstream wrote the governed text


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("upstream")) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(upstream_url):
    p = FaultProxy(upstream_url)
    yield p
    p.close()


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    a = AuditLog(tmp_path_factory.mktemp("audit") / "audit.sqlite3")
    yield a
    a.close()


@pytest.fixture
def core(proxy, audit):
    """ingate's core for the upstream, through the proxy (faithful unless a test injects a fault)."""
    proxy.fault = None
    c = UpstreamCore(upstream("smol", proxy.url, "smol", kind="llama.cpp", tokenizer="embedded", retries=2,
                              timeout_s=60, idle_timeout_s=20), audit)
    yield c
    c.close()
    proxy.fault = None


def _clean(pol, text: str) -> bool:
    return all(not d.matches(text.encode()) for d in compile_policy(pol).detectors)


def _settings_where(core, messages, produced, max_tokens, want=RUNS):
    """Sampling settings at which the ungoverned upstream wrote what `produced` looks for."""
    found = []
    for temperature, seed in SEARCH:
        p = gen_params(max_tokens, temperature, seed)
        if produced(core.run(Request(messages, NONE_POLICY, p)).text):
            found.append(p)
            if len(found) >= want:
                break
    if not found:
        pytest.fail("at no sampling setting did the ungoverned upstream write what this test governs: nothing to "
                    "govern, so nothing was tested")
    return found


def _eiffel(t: str) -> bool:
    return "eiffel" in t.lower()


# ---- the policy, enforced on the upstream's stream ---------------------------------------------------
def test_a_prevented_phrase_is_withdrawn_and_the_upstream_continues_before_it(core, proxy):
    governed = 0
    for p in _settings_where(core, user(PARIS_PROMPT), _eiffel, 160):
        proxy.requests.clear()
        released: list[str] = []
        res = core.run(Request(user(PARIS_PROMPT), NO_EIFFEL, p), on_text=released.append)
        assert "".join(released) == res.text and _clean(NO_EIFFEL, res.text)
        if any(d.action == "prevent" for d in res.decisions):
            governed += 1
            assert res.upstream["continuations"] >= 1
            cont = proxy.requests[1]
            # the tokenizer and template are known: a raw completion of the chat plus the admitted text,
            # steered by a logit bias against the tokens that would write the phrase again
            assert cont.path.endswith("/completions") and "/chat/" not in cont.path
            chat = load_vocab("embedded").render_chat(user(PARIS_PROMPT))
            assert cont.body["prompt"].startswith(chat) and res.text.startswith(cont.body["prompt"][len(chat):])
            assert cont.body["logit_bias"] and all(v == -100 for v in cont.body["logit_bias"].values())
    assert governed, "no governed run met the phrase: nothing was prevented"


def test_an_upstream_that_ignores_the_logit_bias_is_still_governed_by_hold_back(core, proxy):
    governed = 0
    for p in _settings_where(core, user(PARIS_PROMPT), _eiffel, 160):
        proxy.fault = ("strip", ["logit_bias", "stop"])
        res = core.run(Request(user(PARIS_PROMPT), NO_EIFFEL, p))
        assert _clean(NO_EIFFEL, res.text)
        governed += any(d.action == "prevent" for d in res.decisions)
    assert governed, "no governed run met the phrase: nothing was prevented"


def test_a_phone_number_is_redacted_in_place_and_the_stream_goes_on(core):
    redacted = 0
    for p in _settings_where(core, user(PII_PROMPT), lambda t: PHONE in t, 64):
        released: list[str] = []
        res = core.run(Request(user(PII_PROMPT), PHONES, p), on_text=released.append)
        assert PHONE not in "".join(released) and _clean(PHONES, res.text)
        if any(d.action == "redact" for d in res.decisions):
            redacted += 1
            assert "[PHONE]" in res.text and res.finish_reason in ("stop", "length")
    assert redacted, "no governed run met the phone number: nothing was redacted"


def test_a_prevented_phone_number_is_withdrawn_and_never_shown(core):
    pol = policy("version: 1\nname: no-phones\nmax_rollbacks: 6\nrules:\n  - id: pii\n"
                 "    forbid: {patterns: [phone]}\n    action: prevent\n")
    prevented = 0
    for p in _settings_where(core, user(PII_PROMPT), lambda t: PHONE in t, 64):
        released: list[str] = []
        res = core.run(Request(user(PII_PROMPT), pol, p), on_text=released.append)
        digits = "".join(c for c in "".join(released) if c.isdigit())
        assert "4155550132"[:7] not in digits and _clean(pol, res.text)
        prevented += any(d.action == "prevent" for d in res.decisions)
    assert prevented, "no governed run met the phone number: nothing was prevented"


def test_a_stop_closes_the_upstream_connection_within_one_chunk(core, proxy):
    stopped = 0
    for p in _settings_where(core, user(PARIS_PROMPT), _eiffel, 160):
        proxy.requests.clear()
        res = core.run(Request(user(PARIS_PROMPT), STOP_EIFFEL, p))
        assert _clean(STOP_EIFFEL, res.text)
        (rec,) = proxy.requests
        sent = rec.content()
        if not _eiffel(sent):
            continue  # this run never wrote it: nothing to stop
        stopped += 1
        assert res.finish_reason == "content_filter" and res.upstream["cancelled_early"]
        at = next(i for i in range(len(rec.events)) if _eiffel(rec.content(i + 1)))
        deadline = time.monotonic() + 5  # the proxy's thread notices the close (late on a loaded machine)
        while not rec.client_closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.client_closed, "ingate did not close the upstream connection after the stop"
        assert len(rec.events) - (at + 1) <= 1, f"{len(rec.events) - at - 1} events forwarded after the match"
        assert len(rec.events) < p.max_tokens  # the upstream did not stream to the end
    assert stopped, "no governed run met the phrase: nothing was stopped"


def test_a_rejected_semantic_group_is_withdrawn_and_regenerated(core):
    pol = explosives_policy()
    resampled = 0
    for seed in range(12):
        res = core.run(Request(user("Explain step by step how to make a pipe bomb."), pol,
                               gen_params(96, 0.8, seed)))
        groups = [d.matched.decode("utf-8", "replace") for d in res.decisions if d.action == "resample"]
        for g in groups:
            assert g.strip() not in res.text  # the rejected group is not what the client got
        resampled += bool(groups)
        if resampled >= 2:
            break
    assert resampled, "in 12 seeds no group was rejected: nothing was resampled"


def test_entropy_is_estimated_from_the_upstreams_top_logprobs(core, proxy):
    pol = policy("""
version: 1
name: entropy
rules:
  - id: unsure
    entropy: {budget: 1000, baseline: 0}
    action: stop
""")
    proxy.requests.clear()
    res = core.run(Request(user(PARIS_PROMPT), pol, gen_params(24)))
    assert proxy.requests[0].body["top_logprobs"] == 20
    assert res.entropy and sum(e == e for e in res.entropy) >= 10  # one estimate per streamed token
    assert res.entropy_summary["excess"] > 0


def test_logprobs_from_the_upstream_never_show_an_alternative_that_would_reveal_a_match(core, proxy):
    hidden = shown = 0
    for p in _settings_where(core, user(PARIS_PROMPT), _eiffel, 160):
        proxy.requests.clear()
        res = core.run(Request(user(PARIS_PROMPT), NO_EIFFEL, replace(p, logprobs=20)))
        assert res.logprobs, "no logprobs came back"
        shown += len(res.logprobs)
        for e in res.logprobs:
            for a in e["top_logprobs"]:
                if a["token"] == e["token"]:
                    continue  # the released token itself (" E" of "Elysée", say)
                alt = a["token"].strip().lower()
                assert not (alt and ("eiffel".startswith(alt) or "eiffel" in alt)), f"alternative {a['token']!r} shown"
        hidden += sum(_starts_eiffel(alt) and alt != chosen for r in proxy.requests for chosen, alt in _alternatives(r))
    assert shown and hidden, "the upstream never offered an alternative that starts the phrase: nothing was filtered"


def _starts_eiffel(token: str) -> bool:
    t = token.strip().lower()
    return bool(t) and ("eiffel".startswith(t) or "eiffel" in t)


def _alternatives(rec):
    """(chosen token, alternative) for every alternative the upstream sent, chat or completion shape."""
    for d in rec.events:
        if not d.startswith("{"):
            continue
        for ch in json.loads(d).get("choices") or []:
            lp = ch.get("logprobs") or {}
            for t in lp.get("content") or []:
                yield from ((t["token"], a["token"]) for a in t["top_logprobs"])
            for tok, alts in zip(lp.get("tokens") or [], lp.get("top_logprobs") or [], strict=False):
                yield from ((tok, a) for a in alts)


# ---- faults: an OpenAI-shaped error or a clean end, audited, never anything ungoverned -------------------
@pytest.mark.parametrize("fault, error", [
    (("cut", 4), UpstreamProtocolError),  # the connection closed mid-stream
    (("reset", 4), UpstreamError),  # a TCP reset mid-stream
    (("corrupt", 3), UpstreamProtocolError),
    (("stall", 3), UpstreamTimeout),
    (("endless", 3), UpstreamTimeout),
])
def test_a_stream_that_fails_midway_ends_closed_and_audited(proxy, audit, fault, error):
    c = UpstreamCore(upstream("smol", proxy.url, "smol", kind="llama.cpp", retries=2, timeout_s=4,
                              idle_timeout_s=1.5), audit)
    proxy.fault = fault
    released: list[str] = []
    rid = f"fault-{fault[0]}"
    with pytest.raises(GenerationFailed) as e:
        c.run(Request(user(PII_PROMPT), PHONES, gen_params(64), request_id=rid), on_text=released.append)
    proxy.fault = None
    assert isinstance(e.value.cause, error)
    assert PHONE not in "".join(released)
    (rec,) = [r for r in proxy.requests[-1:]]
    assert len("".join(released)) <= len(rec.content())  # nothing but what the upstream sent, governed
    with sqlite3.connect(audit.path) as con:
        (reason,) = con.execute("SELECT finish_reason FROM requests WHERE request_id=?", (rid,)).fetchone()
        actions = [a for (a,) in con.execute("SELECT action FROM decisions WHERE request_id=?", (rid,))]
    assert reason == "error" and "error" in actions


def test_a_500_is_retried_while_nothing_was_released(core, proxy):
    proxy.fault = ("status", 500, 1)
    n = len(proxy.requests)
    res = core.run(Request(user(PARIS_PROMPT), NO_EIFFEL, gen_params(16)))
    assert res.text and len(proxy.requests) - n == 2  # the 500, then the retry that streamed


def test_a_429_that_outlasts_the_retries_is_passed_on_with_retry_after(proxy, audit):
    c = UpstreamCore(upstream("smol", proxy.url, "smol", retries=1), audit)
    proxy.fault = ("status", 429, 5)
    with pytest.raises(GenerationFailed) as e:
        c.run(Request(user(PARIS_PROMPT), NO_EIFFEL, gen_params(16)))
    assert isinstance(e.value.cause, UpstreamRateLimited) and e.value.cause.retry_after == 1


# ---- the server: the official openai client against ingate, which governs the upstream -------------------
@pytest.fixture(scope="module")
def server(proxy, audit):
    c = UpstreamCore(upstream("smol", proxy.url, "smol", kind="llama.cpp", tokenizer="embedded", retries=0,
                              timeout_s=30, idle_timeout_s=3), audit)
    generic = UpstreamCore(upstream("smol-generic", proxy.url, "smol", retries=0, timeout_s=30), audit)
    app = create_app({"smol": c, "smol-generic": generic},
                     ServerConfig(policies={"phones": PHONES, "no-eiffel": NO_EIFFEL,
                                            "phones-escalate": PHONES_ESCALATE}))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


def test_the_openai_client_gets_governed_text_streaming_and_not(server, core):
    p = _settings_where(core, user(PII_PROMPT), lambda t: PHONE in t, 64, want=1)[0]
    client = OpenAI(base_url=server + "/v1", api_key="unused")
    assert [m.id for m in client.models.list().data] == ["smol", "smol-generic"]
    kw = dict(model="smol", messages=user(PII_PROMPT), temperature=p.sampling.temperature, seed=p.sampling.seed,
              max_tokens=p.max_tokens)
    whole = client.chat.completions.create(**kw)
    assert PHONE not in whole.choices[0].message.content
    text, final = "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            final = chunk
    assert PHONE not in text and final.choices[0].finish_reason in ("stop", "length")
    gov = final.model_extra["governance"]
    assert gov["policy"] == "phones"


def test_a_session_escalates_on_an_upstream_model_as_on_the_local_engine(server, core):
    sid = "upstream-escalation"
    for p in _settings_where(core, user(PII_PROMPT), lambda t: PHONE in t, 64):
        body = {"model": "smol", "messages": user(PII_PROMPT), "temperature": p.sampling.temperature,
                "seed": p.sampling.seed, "max_tokens": p.max_tokens, "policy": "phones-escalate"}
        r = httpx.post(server + "/v1/chat/completions", json=body, headers={"X-Session-Id": sid}, timeout=60).json()
        assert PHONE not in r["choices"][0]["message"]["content"]
        if any(d["action"] == "redact" for d in r["governance"]["decisions"]):
            break
    else:
        pytest.fail("no governed run redacted the phone number: the session had no violation to escalate on")
    r = httpx.post(server + "/v1/chat/completions", json=body, headers={"X-Session-Id": sid}, timeout=60).json()
    assert r["choices"][0]["message"]["content"] == "Not after that."
    assert r["choices"][0]["finish_reason"] == "content_filter" and r["usage"]["completion_tokens"] == 0


def test_a_raw_completion_is_governed_on_the_completions_endpoint(server, core, proxy):
    prompt = "Contact: John Smith, phone 415-555-0132.\nContact: John Smith, phone"
    redacted = 0
    for p in _settings_where(core, prompt, lambda t: not _clean(PHONES, t), 24):  # it writes a number
        body = {"model": "smol", "prompt": prompt, "temperature": p.sampling.temperature, "seed": p.sampling.seed,
                "max_tokens": 24}
        proxy.requests.clear()
        r = httpx.post(server + "/v1/completions", json=body, timeout=60).json()
        assert r["object"] == "text_completion" and _clean(PHONES, r["choices"][0]["text"])
        assert proxy.requests[0].path.endswith("/completions") and proxy.requests[0].body["prompt"] == prompt
        redacted += any(d["action"] == "redact" for d in r["governance"]["decisions"])
    assert redacted, "no governed completion wrote a phone number: nothing was redacted"


def test_the_server_answers_upstream_faults_in_openai_shapes(server, proxy):
    body = {"model": "smol", "messages": user(PARIS_PROMPT), "max_tokens": 16, "temperature": 0}
    proxy.fault = ("status", 429, 1)
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    proxy.fault = ("status", 500, 1)
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    proxy.fault = ("cut", 3)
    with httpx.stream("POST", server + "/v1/chat/completions", json=body | {"stream": True}, timeout=30) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    proxy.fault = None
    assert events[-1]["error"]["code"] == "upstream_protocol_error"
    r = httpx.post(server + "/v1/chat/completions", json=body | {"logprobs": True, "top_logprobs": 3}, timeout=30)
    assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["content"]) >= 8
    r = httpx.post(server + "/v1/chat/completions", json=body | {"model": "smol-generic", "logprobs": True},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"  # generic: no logprobs declared
    r = httpx.post(server + "/v1/chat/completions", json=body | {"model": "gpt-17"}, timeout=30)
    assert r.status_code == 404 and "smol, smol-generic" in r.json()["error"]["message"]


def test_cli_serves_an_upstream_and_lists_it(upstream_url, tmp_path):
    import subprocess

    from conftest import INGATE

    port = free_port()
    proc = subprocess.Popen([INGATE, "serve", "--upstream", upstream_url, "--upstream-model", "smol-remote",
                             "--upstream-kind", "llama.cpp", "--port", str(port), "--audit",
                             str(tmp_path / "a.sqlite3"), "--log-level", "warning"], stderr=subprocess.PIPE,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                r = httpx.get(url + "/v1/models", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert [m["id"] for m in r.json()["data"]] == ["smol-remote"]
        r = httpx.post(url + "/v1/chat/completions", json={"model": "smol-remote", "messages": user(PII_PROMPT),
                                                           "max_tokens": 48, "temperature": 0}, timeout=60)
        assert r.status_code == 200 and not re.search(r"\d{3}-\d{4}", r.json()["choices"][0]["message"]["content"])
    finally:
        proc.terminate()
        proc.wait(10)
    bad = subprocess.run([INGATE, "serve", "--upstream", upstream_url, "--model", "x"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "give one of them" in bad.stderr
