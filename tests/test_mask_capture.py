"""What leaves for an upstream under mask_upstream, seen from the upstream's side of a real HTTP
connection, and the answer's round trip.

`CaptureUpstream` (tests/upstreams.py) is a real HTTP server on loopback that records every body
ingate sends it. It is a test double for the answer only, and says so: it answers by echoing the
last message it got (the masked text), split into stream events where the test says, since no real
server lets a test choose its splits. The model's own round trip runs against the real llama.cpp server at the end.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import OpenAI

from conftest import SEARCH, gen_params, policy, user
from ingate.core import Request
from ingate.policy import NONE_POLICY
from ingate.server import ServerConfig, create_app
from ingate.upstream.config import upstream
from ingate.upstream.core import UpstreamCore
from upstreams import CaptureUpstream, FaultProxy, free_port, llama_server

MASK = policy("""
version: 1
name: mask
mask_upstream: [email, phone, credit_card, us_ssn, itin, iban]
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: redact
""")


def _serve(cores: dict, policies: dict):
    app = create_app(cores, ServerConfig(policies=policies))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.05)
    return srv, t, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def capture():
    up = CaptureUpstream()
    cores = {k: UpstreamCore(upstream(k, up.url, "cap", kind=k, retries=0, timeout_s=20), None)
             for k in ("openai", "vllm", "generic")}
    srv, t, url = _serve(cores, {"mask": MASK})
    yield up, url
    srv.should_exit = True
    t.join(10)
    up.close()


# ---- values, encodings, places ------------------------------------------------------------------------
_LOCAL = st.from_regex(r"[a-z][a-z0-9._]{0,8}[a-z0-9]", fullmatch=True)
_EMAIL = st.builds(lambda a, b: f"{a}@{b}.com", _LOCAL, st.from_regex(r"[a-z]{2,8}", fullmatch=True))
_PHONE = st.builds(lambda a, b: f"415-{a:03d}-{b:04d}", st.integers(200, 999), st.integers(0, 9999))
_CARD = st.sampled_from(["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"])
_SSN = st.builds(lambda a, b, c: f"{a:03d}-{b:02d}-{c:04d}", st.integers(1, 899).filter(lambda x: x != 666),
                 st.integers(1, 99), st.integers(1, 9999))
_ITIN = st.builds(lambda b, c: f"9{b:02d}-7{c % 10}-{c:04d}", st.integers(0, 99), st.integers(1000, 9999))
_ENC = {"plain": lambda v: v, "percent": lambda v: v.replace("@", "%40"),
        "html": lambda v: v.replace("@", "&#64;").replace(".", "&#46;"), "u": lambda v: v.replace("@", "\\u0040"),
        "nbsp": lambda v: v.replace("-", "&nbsp;")}
PLACES = ("system", "user", "assistant", "tool_result", "tool_args", "tool_description", "tool_parameter",
          "schema_description")


def _body(place: str, text: str, stream: bool, model: str) -> dict:
    """A chat request that carries `text` at `place`, and nowhere else a value."""
    msgs: list[dict] = [{"role": "user", "content": "Hello."}]
    body: dict = {"model": model, "stream": stream, "max_tokens": 64, "temperature": 0, "policy": "mask"}
    fn = {"name": "look_up", "description": "Finds an account.", "parameters": {
        "type": "object", "properties": {"q": {"type": "string", "description": "what to find"}}, "required": ["q"]}}
    if place == "system":
        msgs.insert(0, {"role": "system", "content": text})
    elif place == "user":
        msgs[0]["content"] = text
    elif place == "assistant":
        msgs += [{"role": "assistant", "content": text}, {"role": "user", "content": "Go on."}]
    elif place in ("tool_result", "tool_args"):
        call = {"id": "c1", "type": "function", "function": {"name": "look_up",
                                                             "arguments": json.dumps({"q": text if place == "tool_args"
                                                                                      else "x"})}}
        msgs += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": "c1", "content": text if place == "tool_result" else "none"}]
    if place.startswith("tool") or place == "tool_args":
        if place == "tool_description":
            fn["description"] = text
        if place == "tool_parameter":
            fn["parameters"]["properties"]["q"]["description"] = text
        body |= {"tools": [{"type": "function", "function": fn}], "tool_choice": "auto"}
    if place == "schema_description":
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
            "type": "object", "description": text, "properties": {"a": {"type": "string", "title": text}},
            "required": ["a"]}}}
    body["messages"] = msgs
    return body


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_EMAIL, _PHONE, _CARD, _SSN, _ITIN), min_size=1, max_size=3),
       st.sampled_from(sorted(_ENC)), st.sampled_from(PLACES), st.booleans(),
       st.sampled_from(["openai", "vllm", "generic"]), st.text(st.characters(codec="ascii", categories=["L", "Zs"]),
                                                               max_size=8))
def test_no_covered_value_reaches_the_upstream_from_any_place(capture, values, enc, place, stream, model, filler):
    up, url = capture
    up.bodies.clear()
    written = [_ENC[enc](v) for v in values]
    text = f"Note {filler}: " + ", ".join(written) + "."
    r = httpx.post(url + "/v1/chat/completions", json=_body(place, text, stream, model), timeout=30)
    assert r.status_code == 200, r.text
    assert up.bodies, "the upstream was never asked"
    sent = json.dumps(up.bodies, ensure_ascii=False)
    for v in written:
        assert v not in sent and json.dumps(v)[1:-1] not in sent, (v, place)
    assert "[" in sent  # the placeholders went instead


def test_the_masked_echo_comes_back_byte_for_byte_over_http_in_any_two_part_split(capture):
    """The upstream (the double) echoes what it got; the client gets its own text back."""
    up, url = capture
    text = "Mail john.smith@example.com, call 415-555-0132, mail john.smith@example.com again."
    masked = "Mail [EMAIL_1], call [PHONE_1], mail [EMAIL_1] again."
    for cut in range(1, len(masked)):
        up.cuts, up.bodies = [cut], []
        body = {"model": "openai", "messages": user(text), "max_tokens": 64, "policy": "mask", "stream": cut % 2 == 0}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        got = r.json()["choices"][0]["message"]["content"] if cut % 2 else "".join(
            json.loads(ln[6:])["choices"][0]["delta"].get("content") or "" for ln in r.text.splitlines()
            if ln.startswith("data: {") and json.loads(ln[6:]).get("choices"))
        assert up.bodies[0]["messages"][-1]["content"] == masked
        assert got == text, cut
    up.cuts = []


def test_an_unknown_field_is_still_refused_not_forwarded_unread(capture):
    up, url = capture
    up.bodies.clear()
    r = httpx.post(url + "/v1/chat/completions", json={"model": "openai", "messages": user("a@b.io"),
                                                       "policy": "mask", "audio": {"voice": "x"}}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio" and not up.bodies


# ---- the real model ---------------------------------------------------------------------------------
ROUND = "Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132."


@pytest.mark.slow
def test_the_real_upstream_copies_placeholders_and_the_client_gets_its_values_back(tmp_path_factory):
    with llama_server(tmp_path_factory.mktemp("upstream")) as base:
        proxy = FaultProxy(base)
        core = UpstreamCore(upstream("smol", proxy.url, "smol", kind="llama.cpp", retries=1, timeout_s=60), None)
        srv, t, url = _serve({"smol": core}, {"mask": MASK})
        try:
            client = OpenAI(base_url=url + "/v1", api_key="unused")
            copied = 0
            for temperature, seed in SEARCH[:8]:
                proxy.requests.clear()
                out = client.chat.completions.create(model="smol", messages=user(ROUND), temperature=temperature,
                                                     seed=seed, max_tokens=48, extra_body={"policy": "mask"})
                text = out.choices[0].message.content or ""
                sent = json.dumps([f.body for f in proxy.requests])
                upstream_text = "".join(f.content() for f in proxy.requests)
                assert "john.smith@example.com" not in sent and "415-555-0132" not in sent
                assert "[EMAIL_1]" in sent and "[PHONE_1]" in sent
                if "[EMAIL_1]" in upstream_text:  # the model copied the placeholder: its value is back
                    copied += 1
                    assert "john.smith@example.com" in text and "[EMAIL_1]" not in text
            assert copied, "the model never copied a placeholder at any setting: nothing was restored"
            # the ungoverned model does echo its input: the masking, not the model, kept the values away
            plain = core.run(Request(user(ROUND), NONE_POLICY, gen_params(48))).text
            assert plain
        finally:
            srv.should_exit = True
            t.join(10)
            proxy.close()
            core.close()


def test_the_readmes_tool_call_round_trip_with_the_official_client():
    """README's example: the upstream (ScriptedUpstream, a test double replaying a call) is asked
    with the address masked and calls the tool with its placeholder; the client gets its address."""
    from upstreams import ScriptedUpstream

    up = ScriptedUpstream()
    call = '{"name": "send_mail", "arguments": {"to": "[EMAIL_1]"}}'
    up.script([[call[:30], call[30:38], call[38:]]], [[]])
    pol = policy("version: 1\nname: support-bot\nmask_upstream: [email, phone, credit_card]\nrules:\n"
                 "  - id: pii\n    forbid: {patterns: [email, phone]}\n    action: redact\n")
    core = UpstreamCore(upstream("smol", up.url, "smol", kind="openai", retries=0, timeout_s=20), None)
    srv, t, url = _serve({"smol": core}, {"support-bot": pol})
    try:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        tools = [{"type": "function", "function": {"name": "send_mail", "description": "Mails a customer.",
                  "parameters": {"type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}}}]
        out = client.chat.completions.create(model="smol", tools=tools, tool_choice="required", messages=[
            {"role": "user", "content": "Mail ana@corp.org our prices."}])
        assert json.loads(out.choices[0].message.tool_calls[0].function.arguments) == {"to": "ana@corp.org"}
        assert out.model_extra["governance"]["masked"] == {"email": 1}
        sent = json.dumps(up.bodies)
        assert "ana@corp.org" not in sent and "Mail [EMAIL_1] our prices." in sent
    finally:
        srv.should_exit = True
        t.join(10)
        up.close()
        core.close()
