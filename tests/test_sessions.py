"""Sessions shared by replicas: the stores' atomic begin/end, against the real Redis on 127.0.0.1:6379
(and a redis-server of the test's own, on its own port, for the outage), and two real `ingate
serve` replicas sharing one Redis.

Where Redis is not reachable on a developer's machine these tests fail, loudly, and say so: they
are never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from conftest import PII_PROMPT, api_sampling, policy
from ingate.gate.decision import Action, Decision
from ingate.store.sessions import BUSY, ESCALATED, OK, MemorySessionStore, StoreError
from ingate.store.sessions.redis import RedisSessionStore
from upstreams import free_port

REDIS = os.environ.get("INGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
VIOLATION = Decision("pii", Action.REDACT, 0, 0, b"", "redacted one phone")


@pytest.fixture(scope="module", autouse=True)
def redis_is_there():
    r = redis.Redis.from_url(REDIS, socket_timeout=2)
    try:
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis at {REDIS} is not reachable ({e}): these tests need a real Redis (CI machines run one on "
                    "127.0.0.1:6379; set INGATE_TEST_REDIS to use another)")
    yield
    for k in r.scan_iter("ingate-test-*"):  # what the replicas' tests left (their keys would expire anyway)
        r.delete(k)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield MemorySessionStore(ttl=60)
        return
    prefix = f"ingate-test-{uuid.uuid4().hex[:8]}"
    s = RedisSessionStore(REDIS, prefix, ttl=60)
    yield s
    for k in s.r.scan_iter(f"{prefix}:*"):
        s.r.delete(k)


def test_a_session_is_admitted_until_its_violations_and_requests_in_flight_reach_the_limit(store):
    t = store.begin("alice", "r1", 2)
    assert t.verdict == OK and t.state.violations == 0 and t.state.in_flight == 0
    assert store.begin("alice", "r2", 2).verdict == OK
    assert store.begin("alice", "r3", 2).verdict == BUSY  # two in flight could still make two violations
    assert store.end("alice", "r1", [VIOLATION], 0.5).violations == 1
    assert store.begin("alice", "r3", 2).verdict == BUSY  # one violation + one in flight
    st = store.end("alice", "r2", [VIOLATION, VIOLATION], 0.25)
    assert st.violations == 3 and st.entropy_spent == pytest.approx(0.75) and st.in_flight == 0
    assert store.begin("alice", "r4", 2).verdict == ESCALATED
    assert store.begin("bob", "r5", 2).verdict == OK  # another session is untouched
    assert store.begin("carol", "r6", None).verdict == OK  # no escalation: never refused
    assert store.get("alice").by_rule == {"pii": 3} and store.get("nobody") is None


def test_an_end_counts_once_however_often_it_is_retried(store):
    store.begin("s", "r1", None)
    for _ in range(3):
        st = store.end("s", "r1", [VIOLATION], 1.0)
    assert st.violations == 1 and st.entropy_spent == 1.0 and st.in_flight == 0


def test_a_reservation_expires_so_a_dead_replica_does_not_hold_a_session(store):
    store.reservation_s = 0.2
    assert store.begin("s", "r1", 1).verdict == OK
    assert store.begin("s", "r2", 1).verdict == BUSY
    time.sleep(0.3)
    assert store.begin("s", "r2", 1).verdict == OK


def test_twenty_concurrent_requests_admit_exactly_the_limit(store):
    """The exact bound: with escalate_after N, at most N requests of a session are admitted at once,
    and none once it has N violations."""
    n = 3
    with ThreadPoolExecutor(20) as ex:
        verdicts = list(ex.map(lambda i: store.begin("race", f"r{i}", n).verdict, range(20)))
    assert verdicts.count(OK) == n and verdicts.count(BUSY) == 20 - n
    for i, v in enumerate(verdicts):
        if v == OK:
            store.end("race", f"r{i}", [VIOLATION])
    assert store.begin("race", "late", n).verdict == ESCALATED


def test_redis_keys_expire_and_do_not_hold_the_session_id():
    prefix = f"ingate-test-{uuid.uuid4().hex[:8]}"
    s = RedisSessionStore(REDIS, prefix, ttl=30)
    s.begin("alice@example.com", "r1", None)
    s.end("alice@example.com", "r1", [VIOLATION])
    keys = [k.decode() for k in s.r.scan_iter(f"{prefix}:*")]
    assert keys and all("alice" not in k for k in keys)
    assert all(0 < s.r.ttl(k) <= 30 for k in keys)
    for k in keys:
        s.r.delete(k)


# ---- Redis going away and coming back (a redis-server of this test's own) ---------------------------
@contextlib.contextmanager
def own_redis(port: int):
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not on PATH: the outage test starts one of its own (Debian: redis-server)")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.RedisError):
                if r.ping():
                    break
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_store_that_is_down_raises_and_one_that_is_back_serves_again():
    port = free_port()
    with own_redis(port):
        s = RedisSessionStore(f"redis://127.0.0.1:{port}/0", "t", ttl=60, timeout_s=0.5)
        assert s.begin("a", "r1", 2).verdict == OK
    with pytest.raises(StoreError, match="session store redis://127.0.0.1"):
        s.begin("a", "r2", 2)
    assert not s.health()["ok"]
    with own_redis(port):  # back, empty: this test's own server keeps nothing on disk
        assert s.begin("a", "r3", 2).verdict == OK and s.health()["ok"]


# ---- two real replicas sharing one Redis -------------------------------------------------------------
STRICT = """version: 1
name: strict
session: {escalate_after: 2, refusal: "No more."}
rules:
  - id: pii
    forbid: {patterns: [phone]}
    action: redact
"""


@contextlib.contextmanager
def two_replicas(tmp_path, policy_yaml: str, *extra: str):
    """Two real `ingate serve` replicas with `policy_yaml` (and `extra` flags), sharing one Redis under
    a fresh prefix: (a, b, prefix)."""
    from test_server import Server

    (tmp_path / "policy.yaml").write_text(policy_yaml)
    prefix = f"ingate-test-{uuid.uuid4().hex[:8]}"
    flags = ("--policy", str(tmp_path / "policy.yaml"), "--sessions", REDIS, "--sessions-prefix", prefix, *extra)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Server(tmp_path / "a", *flags)
    try:
        b = Server(tmp_path / "b", *flags)
        try:
            yield a, b, prefix
        finally:
            b.stop()
    finally:
        a.stop()


@pytest.mark.slow
def test_violations_on_one_replica_count_on_the_other(tmp_path, phone_run):
    from test_server import client

    with two_replicas(tmp_path, STRICT) as (a, b, _):
        def ask(server, sid):
            return client(server).chat.completions.create(
                model="any", messages=[{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_run[0]),
                extra_headers={"X-Session-Id": sid})

        first, second = ask(a, "alice"), ask(b, "alice")  # one violation on each replica
        assert first.model_extra["governance"]["session"]["violations"] == 1
        assert second.model_extra["governance"]["session"]["violations"] == 2
        for replica in (a, b):  # the third is refused on either one
            third = ask(replica, "alice")
            assert third.choices[0].message.content == "No more." and third.choices[0].finish_reason == "content_filter"
        assert "[PHONE]" in ask(a, "bob").choices[0].message.content
        assert a.decisions("refuse") == 1 and b.decisions("refuse") == 1  # each audits its own refusal


@pytest.mark.slow
def test_a_race_over_two_replicas_serves_at_most_the_limit(tmp_path, phone_run):
    """20 concurrent requests of one session, split over both replicas, escalate_after 3: at most 3
    are admitted (each may violate), the rest are told the session is busy (429) or, once it has 3
    violations, refused; the session never ends with more than 3 requests' violations."""
    import httpx

    with two_replicas(tmp_path, STRICT.replace("escalate_after: 2", "escalate_after: 3")) as (a, b, prefix):
        body = {"model": "any", "messages": [{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_run[0])}
        barrier = threading.Barrier(20)

        def one(i):
            barrier.wait()
            r = httpx.post((a if i % 2 else b).url + "/v1/chat/completions", json=body, timeout=300,
                           headers={"X-Session-Id": "race"})
            return r.status_code, r.json()

        with ThreadPoolExecutor(20) as ex:
            out = list(ex.map(one, range(20)))
    served = [j for c, j in out if c == 200 and j["usage"]["completion_tokens"] > 0]
    refused = [j for c, j in out if c == 200 and j["usage"]["completion_tokens"] == 0]
    busy = [j for c, j in out if c == 429]
    assert 1 <= len(served) <= 3 and len(served) + len(refused) + len(busy) == 20, [c for c, _ in out]
    assert all(j["error"]["code"] == "session_busy" for j in busy)
    assert all(j["choices"][0]["message"]["content"] == "No more." for j in refused)
    st = RedisSessionStore(REDIS, prefix).get("race")
    assert st is not None and st.in_flight == 0


@pytest.mark.slow
def test_a_policy_that_needs_the_store_refuses_while_it_is_down_and_serves_when_it_is_back(runtime, tmp_path,
                                                                                        phone_run):
    from fastapi.testclient import TestClient

    from ingate.server import ServerConfig, create_app
    from test_leaks import _Borrowed

    port = free_port()
    strict = policy(STRICT)
    store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", "t", ttl=60, timeout_s=0.5)
    app = create_app(_Borrowed(runtime), ServerConfig(policies={"strict": strict}, sessions=store))
    body = {"model": "m", "messages": [{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_run[0])}
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "s"}).json()
        assert r["choices"][0]["message"]["content"] == "No more."  # no Redis yet: fail closed
        assert r["governance"]["decisions"][0]["action"] == "refuse"
        assert c.get("/healthz").json()["sessions"]["ok"] is False
        assert 'ingate_session_store_errors_total{op="begin"}' in c.get("/metrics").text
        with own_redis(port):
            r = c.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "s"}).json()
            assert "[PHONE]" in r["choices"][0]["message"]["content"]  # served again, no restart
            assert r["governance"]["session"]["violations"] == 1
    import sqlite3

    with sqlite3.connect(runtime.audit.path) as con:
        details = [d for (d,) in con.execute("SELECT detail FROM decisions WHERE rule_id='session'")]
    assert any("session store unavailable" in d and "on_store_error: refuse" in d for d in details)


@pytest.mark.slow
def test_a_session_entropy_budget_spent_on_one_replica_holds_on_the_other(tmp_path):
    from test_server import client

    budget = ("version: 1\nname: budget\nrules:\n  - id: unsure\n    entropy: {session_budget: 2.0, baseline: 0.0}\n"
              "    action: stop\n    message: \"(budget spent)\"\n")
    with two_replicas(tmp_path, budget) as (a, b, _):
        def ask(server):
            return client(server).chat.completions.create(
                model="any", messages=[{"role": "user", "content": "Tell me a story about a lighthouse."}],
                temperature=0.8, seed=1, max_tokens=64, extra_headers={"X-Session-Id": "spender"})

        first = ask(a)
        spent = first.model_extra["governance"]["session"]["entropy_spent"]
        assert spent >= 2.0 and first.usage.completion_tokens > 0  # the budget was spent on replica a
        second = ask(b)
        assert second.usage.completion_tokens == 0 and second.choices[0].finish_reason == "content_filter"
        assert second.choices[0].message.content == "(budget spent)"
