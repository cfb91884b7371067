"""A real `ingate serve` on loopback, driven by the official openai client and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import httpx
import openai
import pytest

from conftest import INGATE, PARIS_PROMPT, PII_PROMPT, api_sampling
from upstreams import START_TIMEOUT_S

pytestmark = pytest.mark.slow
TWO_POLICIES = """version: 1
name: no-eiffel
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: prevent
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audit = tmp / "audit.sqlite3"
        env = dict(os.environ, INGATE_AUDIT=str(self.audit))
        # the server's log (an access line per request) goes to a file: a pipe nobody reads would fill
        self.log = tmp / "server.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([INGATE, "serve", "--port", str(self.port), *args], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()}")
        raise RuntimeError(f"server did not start in {START_TIMEOUT_S:g} s")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)

    def decisions(self, action: str) -> int:
        with sqlite3.connect(self.audit) as con:
            return con.execute("SELECT COUNT(*) FROM decisions WHERE action=?", (action,)).fetchone()[0]


def _two_policy_server(tmp_path_factory, name: str, *extra: str):
    """A server with the default policy and a no-Eiffel policy, plus `extra` flags."""
    tmp = tmp_path_factory.mktemp(name)
    pol = tmp / "no-eiffel.yaml"
    pol.write_text(TWO_POLICIES)
    s = Server(tmp, "--policy", "default", "--policy", str(pol), *extra)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _two_policy_server(tmp_path_factory, "srv", "--max-body-bytes", "20000", "--max-tokens-cap", "512")


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    yield from _two_policy_server(tmp_path_factory, "locked", "--api-key", "sekret", "--api-key",
                                  "narrow:no-eiffel", "--api-key", "auditor::full", "--max-queue", "1",
                                  "--parallel", "1")  # one running, one waiting: the third gets a 429


def client(server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    h = httpx.get(server.url + "/healthz").json()
    assert h["status"] == "ok" and h["policies"] == ["default", "no-eiffel"]


def test_openai_client_sync_governed(server, phone_run):
    r = client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": PII_PROMPT}],
                                                **api_sampling(phone_run[0]))
    assert "[PHONE]" in r.choices[0].message.content and "0132" not in r.choices[0].message.content
    assert r.choices[0].finish_reason == phone_run[1].finish_reason
    assert r.usage.completion_tokens == phone_run[1].completion_tokens and r.usage.prompt_tokens > 0
    gov = r.model_extra["governance"]
    assert gov["policy"] == "default" and gov["decisions"][0]["action"] == "redact"


def test_openai_client_stream_with_policy_choice_and_usage(server, eiffel_run):
    stream = client(server).chat.completions.create(
        model="any", messages=[{"role": "user", "content": PARIS_PROMPT}], **api_sampling(eiffel_run[0]),
        stream=True, stream_options={"include_usage": True}, extra_body={"policy": "no-eiffel"})
    text, finish, gov, usage = "", None, None, None
    for ch in stream:
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
            gov = (ch.model_extra or {}).get("governance") or gov
        if ch.usage:
            usage = ch.usage
    assert "eiffel" not in text.lower() and len(text) > 100
    assert finish in ("stop", "length") and 0 < usage.completion_tokens <= eiffel_run[0].max_tokens
    assert gov["policy"] == "no-eiffel" and any(d["action"] == "prevent" for d in gov["decisions"])


def test_openai_client_async_and_header_policy(server):
    async def go():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        r = await c.chat.completions.create(model="any", messages=[{"role": "user", "content": PARIS_PROMPT}],
                                            temperature=0, max_tokens=100,
                                            extra_headers={"X-Ingate-Policy": "no-eiffel"})
        s = await c.completions.create(model="any", prompt="The capital of France is", max_tokens=8,
                                       temperature=0, stream=True)
        parts = [ch.choices[0].text async for ch in s if ch.choices]
        return r, "".join(parts)
    r, completion = asyncio.run(go())
    assert "eiffel" not in r.choices[0].message.content.lower()
    assert r.model_extra["governance"]["policy"] == "no-eiffel"
    assert completion.strip()


def test_stop_sequences_are_withheld_even_across_tokens(server):
    base = client(server).completions.create(model="any", prompt="The capital of France is", max_tokens=12,
                                             temperature=0)
    words = base.choices[0].text.split()
    assert len(words) >= 3
    stop = " " + words[2][:3]  # a stop sequence that may well split inside a token
    assert stop in base.choices[0].text
    r = client(server).completions.create(model="any", prompt="The capital of France is", max_tokens=12,
                                          temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text and base.choices[0].text.startswith(r.choices[0].text)


def test_concurrent_streams_match_their_sequential_runs(server):
    jobs = [(PARIS_PROMPT if i % 2 else PII_PROMPT, "no-eiffel" if i % 3 else "default", i) for i in range(8)]

    def run(prompt, policy, seed):
        r = client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": prompt}],
                                                    temperature=0.8, seed=seed, max_tokens=40,
                                                    extra_body={"policy": policy})
        return r.choices[0].message.content

    sequential = [run(*j) for j in jobs]
    results: dict[int, str] = {}

    def stream(i, prompt, policy, seed):
        s = client(server).chat.completions.create(
            model="any", messages=[{"role": "user", "content": prompt}], temperature=0.8, seed=seed,
            max_tokens=40, stream=True, extra_body={"policy": policy})
        results[i] = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)

    threads = [threading.Thread(target=stream, args=(i, *j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [results[i] for i in range(8)] == sequential


def test_client_disconnect_cancels_within_a_token(server):
    before = server.decisions("cancel")
    body = {"messages": [{"role": "user", "content": PARIS_PROMPT}], "max_tokens": 500, "stream": True,
            "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    deadline = time.time() + 10
    while time.time() < deadline and (server.decisions("cancel") == before
                                      or httpx.get(server.url + "/healthz").json()["queue"]):
        time.sleep(0.1)
    assert server.decisions("cancel") == before + 1
    assert httpx.get(server.url + "/healthz").json()["queue"] == 0


def test_logprobs_through_the_openai_client(server, phone_run):
    r = client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": PII_PROMPT}],
                                                **api_sampling(phone_run[0]), logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert any(t.token == "[PHONE]" for t in content)
    assert all(len(t.top_logprobs) <= 3 for t in content)
    stream = client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                                     temperature=0, max_tokens=8, logprobs=True, stream=True)
    final = [ch for ch in stream if ch.choices and ch.choices[0].finish_reason][0]
    assert final.choices[0].logprobs.content  # all of them ride in the final chunk


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, ["not valid JSON"]),
    (b"[1, 2]", 400, ["JSON object"]),
    (b'{"messages": []}', 400, ["messages"]),
    (b'{"model": "x"}', 400, ["messages", "missing"]),
    (b'{"messages": [{"role": "robot", "content": "hi"}]}', 400, ["messages[0].role"]),
    (b'{"messages": "hi"}', 400, ["messages"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 3}', 400, ["temperature"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', 400, ["temperature"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}', 400, ["max_tokens", "cap"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, ["max_tokens"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', 400, ["n > 1"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}', 400, ["needs logprobs"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 50}', 400,
     ["top_logprobs"]),
    (b'{"messages": [{"role": "user", "content": "hi"}], "policy": "nope"}', 400, ["nope", "default",
                                                                                   "no-eiffel"]),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 30000}]}).encode(), 413, ["over the limit"]),
])
def test_bad_input_gets_openai_error_shape(server, body, status, words):
    r = httpx.post(server.url + "/v1/chat/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], (w, err)


_HI = {"role": "user", "content": "hi"}
PROBE = [  # (what, body, status, param, code): malformed requests, each with the answer OpenAI gives
    ("deep nesting", b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, None, None),
    ("deep object", b'{"x":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b"}", 400, None, None),
    ("content null", json.dumps({"messages": [{"role": "user", "content": None}]}).encode(), 400,
     "messages[0].content", None),
    ("content missing", json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "messages[0].content", None),
    ("max_tokens a string", json.dumps({"messages": [_HI], "max_tokens": "10"}).encode(), 400, "max_tokens", None),
    ("stream a string", json.dumps({"messages": [_HI], "stream": "yes"}).encode(), 400, "stream", None),
    ("temperature a string", json.dumps({"messages": [_HI], "temperature": "0.5"}).encode(), 400, "temperature",
     None),
    ("seed a float", json.dumps({"messages": [_HI], "seed": 1.5}).encode(), 400, "seed", None),
    ("stop a number", json.dumps({"messages": [_HI], "stop": 7}).encode(), 400, "stop", None),
    ("role missing", json.dumps({"messages": [{"content": "hi"}]}).encode(), 400, "messages[0].role", None),
    ("content a number", json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400,
     "messages[0].content", None),
    ("prompt over the context", json.dumps({"messages": [{"role": "user", "content": " 7" * 6000}],
                                            "max_tokens": 4}).encode(), 400, None, "context_length_exceeded"),
    ("empty body", b"", 400, None, None),
    ("a string body", b'"hi"', 400, None, None),
    ("null body", b"null", 400, None, None),
]


@pytest.mark.parametrize("what,body,status,param,code", PROBE, ids=[p[0] for p in PROBE])
def test_malformed_requests_get_the_openai_answer(server, what, body, status, param, code):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"},
                   timeout=60)
    assert r.status_code == status, (what, r.text[:300])
    err = r.json()["error"]  # always the OpenAI error shape, never a plain-text 500
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, (what, err)
    assert code is None or err["code"] == code, (what, err)


def test_the_server_is_healthy_after_the_probe(server):
    for _, body, _, _, _ in PROBE:  # the whole probe again, back to back
        httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"},
                   timeout=60)
    assert httpx.get(server.url + "/healthz").status_code == 200
    out = client(server).chat.completions.create(model="x", messages=[_HI], max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_auth_and_policy_restricted_keys(locked):
    with pytest.raises(openai.AuthenticationError):
        client(locked, "wrong").models.list()
    r = httpx.post(locked.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client(locked, "sekret").models.list().data
    with pytest.raises(openai.PermissionDeniedError):
        client(locked, "narrow").chat.completions.create(model="any", max_tokens=4,
                                                         messages=[{"role": "user", "content": "hi"}])
    r = client(locked, "narrow").chat.completions.create(model="any", max_tokens=4, extra_body={"policy": "no-eiffel"},
                                                         messages=[{"role": "user", "content": "hi"}])
    assert r.model_extra["governance"]["policy"] == "no-eiffel"
    r = httpx.post(locked.url + "/v1/chat/completions", headers={"Authorization": "Bearer narrow"},
                   json={"messages": [{"role": "user", "content": "hi"}], "policy": "nope"})
    assert r.status_code == 400 and r.json()["error"]["message"].endswith("known: no-eiffel")  # only its own


def test_governance_detail_is_minimal_unless_the_key_is_trusted(locked, phone_run):
    """Every key sees what was done; only a key written KEY:POLICIES:full sees the internal detail."""
    def ask(key: str) -> list[dict]:
        r = client(locked, key).chat.completions.create(
            model="any", messages=[{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_run[0]))
        return r.model_extra["governance"]["decisions"]

    plain, trusted = ask("sekret"), ask("auditor")
    assert plain and [d["action"] for d in plain] == [d["action"] for d in trusted]
    assert plain[0] == {"rule": "pii", "action": "redact", "token_index": plain[0]["token_index"],
                        "byte_offset": plain[0]["byte_offset"], "detail": "redacted one phone"}
    assert trusted[0]["internal_detail"] == "phone replaced by [PHONE]"


def test_full_queue_answers_429_with_retry_after(locked):
    codes: list[int] = []
    retry: list[str | None] = []

    def one():
        r = httpx.post(locked.url + "/v1/chat/completions", headers={"Authorization": "Bearer sekret"},
                       json={"messages": [{"role": "user", "content": PARIS_PROMPT}], "max_tokens": 60},
                       timeout=60)
        codes.append(r.status_code)
        retry.append(r.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    assert 429 in codes and 200 in codes
    assert all(r == "1" for c, r in zip(codes, retry, strict=True) if c == 429)


def test_sigkill_loses_no_committed_record(tmp_path, phone_run):
    s = Server(tmp_path)
    try:
        r = client(s).chat.completions.create(model="any", messages=[{"role": "user", "content": PII_PROMPT}],
                                               **api_sampling(phone_run[0]))
        assert r.model_extra["governance"]["decisions"]
    finally:
        s.proc.kill()  # SIGKILL: no shutdown hook runs
        s.proc.wait(10)
    with sqlite3.connect(s.audit) as con:
        decisions = con.execute("SELECT rule_id, action FROM decisions").fetchall()
        requests = con.execute("SELECT policy, finish_reason, completion_tokens FROM requests").fetchall()
    assert ("pii", "redact") in decisions
    assert requests == [("default", r.choices[0].finish_reason, r.usage.completion_tokens)]
    out = subprocess.run([INGATE, "audit", "export", "--since", "2020-01-01T00:00", "--audit", str(s.audit)],
                         capture_output=True, text=True)
    kinds = [json.loads(line)["kind"] for line in out.stdout.splitlines()]
    assert out.returncode == 0 and kinds.count("request") == 1 and "decision" in kinds


def test_metrics_count_requests_decisions_and_latencies(server, phone_run):
    client(server).chat.completions.create(model="any", messages=[{"role": "user", "content": PII_PROMPT}],
                                           **api_sampling(phone_run[0]))
    text = httpx.get(server.url + "/metrics").text
    assert 'ingate_decisions_total{action="redact",policy="default",rule="pii"}' in text
    assert "ingate_requests_total{" in text and "ingate_gate_microseconds_bucket" in text
    assert "ingate_time_to_first_token_seconds_count" in text and "ingate_held_bytes_bucket" in text
    assert "ingate_queue_depth 0.0" in text


def test_session_escalation_refuses_before_generating(tmp_path, phone_run):
    pol = tmp_path / "strict.yaml"
    pol.write_text("version: 1\nname: strict\nsession: {escalate_after: 2, refusal: 'No more.'}\nrules:\n"
                   "  - id: pii\n    forbid: {patterns: [phone]}\n    action: redact\n")
    s = Server(tmp_path, "--policy", str(pol))
    try:
        c = client(s)

        def ask(session=None, user=None, stream=False):
            kw = {"extra_headers": {"X-Session-Id": session}} if session else {}
            if user:
                kw["user"] = user
            return c.chat.completions.create(model="any", messages=[{"role": "user", "content": PII_PROMPT}],
                                             **api_sampling(phone_run[0]), stream=stream, **kw)

        first, second = ask("alice"), ask("alice")
        assert first.model_extra["governance"]["session"]["violations"] == 1
        assert second.model_extra["governance"]["session"]["violations"] == 2
        third = ask("alice")
        assert third.choices[0].message.content == "No more."
        assert third.choices[0].finish_reason == "content_filter" and third.usage.completion_tokens == 0
        assert third.model_extra["governance"]["decisions"][0]["action"] == "refuse"
        streamed = ask("alice", stream=True)
        assert "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices) == "No more."
        assert "[PHONE]" in ask("bob").choices[0].message.content  # another session is untouched
        ask(user="carol"), ask(user="carol")
        assert ask(user="carol").choices[0].message.content == "No more."  # `user` names a session too
        with sqlite3.connect(s.audit) as con:
            refusals = con.execute("SELECT COUNT(*) FROM decisions WHERE action='refuse'").fetchone()[0]
            zero = con.execute("SELECT COUNT(*) FROM requests WHERE finish_reason='content_filter'"
                               " AND completion_tokens=0 AND session='alice'").fetchone()[0]
        assert refusals == 3 and zero == 2
    finally:
        s.stop()


def _sse(server, body: dict, on_event=None) -> list[dict]:
    """POST a streaming request; every event as JSON, `on_event(events)` called after each."""
    events: list[dict] = []
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body | {"stream": True},
                      headers={"X-Session-Id": "crash-test"}, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(json.loads(line[6:]))
            if on_event is not None:
                on_event(events)
    return events


def test_a_sigsegv_in_the_engine_costs_only_the_requests_in_flight(tmp_path):
    """SIGSEGV to the real engine process mid-stream and mid-request: each client gets an OpenAI
    error naming the cause, the audit has both requests, nothing unadmitted was released, and
    the server restarts the engine and serves the next request."""
    s = Server(tmp_path, "--policy", "default")
    try:
        h = httpx.get(s.url + "/healthz").json()
        pid = h["engine"]["pid"]
        assert h["engine"]["alive"] and h["engine"]["restarts"] == 0

        killed: list[bool] = []

        def kill_after_first_text(events: list[dict]) -> None:
            if not killed and (events[-1].get("choices") or [{}])[0].get("delta", {}).get("content"):
                killed.append(True)
                os.kill(pid, signal.SIGSEGV)

        body = {"model": "any", "messages": [{"role": "user", "content": PARIS_PROMPT}], "max_tokens": 400,
                "temperature": 0}
        events = _sse(s, body, kill_after_first_text)
        errors = [e["error"] for e in events if "error" in e]
        assert len(errors) == 1 and errors[0]["code"] == "engine_crashed" and errors[0]["type"] == "server_error"
        assert "SIGSEGV" in errors[0]["message"] and f"pid {pid}" in errors[0]["message"]
        assert "INGATE_LLAMA_REPACK=off" in errors[0]["message"] or h["engine"]["layout"] == "off"
        assert not any(e.get("governance") for e in events)  # no normal end was faked
        released = "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for e in events)

        # the next request is served by a new engine process: the same request, uninterrupted
        events = _sse(s, body)
        full = "".join((e.get("choices") or [{}])[0].get("delta", {}).get("content") or "" for e in events)
        assert not any("error" in e for e in events) and any(e.get("governance") for e in events)
        h2 = httpx.get(s.url + "/healthz").json()
        assert h2["status"] == "ok" and h2["engine"]["restarts"] == 1 and h2["engine"]["pid"] != pid
        assert f"pid {pid}" in h2["engine"]["last_crash"]

        # a non-streaming request in flight gets a 503 with the same code
        pid2 = h2["engine"]["pid"]
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(r=httpx.post(
            s.url + "/v1/chat/completions", json=body, timeout=120)))
        t.start()
        deadline = time.time() + 60
        while httpx.get(s.url + "/healthz").json()["queue"] == 0 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # inside the generation, not before it
        os.kill(pid2, signal.SIGSEGV)
        t.join(120)
        assert box["r"].status_code == 503 and box["r"].json()["error"]["code"] == "engine_crashed"
        assert box["r"].headers.get("retry-after") == "1"
        r = client(s).chat.completions.create(model="any", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=8)
        assert r.choices[0].message.content is not None
        metrics = httpx.get(s.url + "/metrics").text
        assert "ingate_engine_restarts_total 2.0" in metrics and "ingate_engine_up 1.0" in metrics
        assert 'ingate_requests_total{finish_reason="error",policy="default"} 2.0' in metrics
    finally:
        s.stop()
    with sqlite3.connect(s.audit) as con:
        rows = con.execute("SELECT request_id, finish_reason, completion_tokens, session FROM requests "
                           "ORDER BY id").fetchall()
        assert [r[1] for r in rows][0] == "error" and [r[1] for r in rows][2] == "error" and len(rows) == 4
        assert rows[0][2] >= 1 and rows[0][3] == "crash-test"  # tokens generated before the crash, counted
        errs = con.execute("SELECT request_id, rule_id, detail FROM decisions WHERE action='error'").fetchall()
        assert {e[0] for e in errs} == {rows[0][0], rows[2][0]} and all(e[1] == "engine" for e in errs)
        assert all("SIGSEGV" in e[2] for e in errs)
    assert released and full.startswith(released)  # what was released is what a whole run releases
