"""Replica-ready: readiness apart from liveness, a SIGTERM that drains, and two replicas under load
sharing the real Redis (sessions) and the real PostgreSQL (audit)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import httpx
import psycopg
import pytest
import redis as redis_py
from fastapi.testclient import TestClient

from conftest import PARIS_PROMPT, PII_PROMPT, api_sampling
from ingate.server import ServerConfig, create_app
from ingate.store.sessions.redis import RedisSessionStore
from test_audit_pg import PG
from test_leaks import _Borrowed
from test_sessions import REDIS
from upstreams import free_port, ingate_serve


def test_readiness_is_not_liveness(runtime):
    from ingate.policy import load_policy

    dead = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", "t", timeout_s=0.3)
    app = create_app(_Borrowed(runtime), ServerConfig(policies={"default": load_policy(None)}, sessions=dead,
                                                      replica="r-test"))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200  # alive: restarting it would not bring Redis back
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"] == {"accepting": True, "engines": True, "sessions": False}
        assert 'ingate_replica_info{replica="r-test"} 1.0' in c.get("/metrics").text
        app.state.server.draining = True
        assert c.get("/readyz").json()["checks"]["accepting"] is False
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


@pytest.mark.slow
def test_sigterm_drains_the_streams_in_flight_and_audits_each(tmp_path):
    audit = tmp_path / "audit.sqlite3"
    proc, url = ingate_serve("--drain-seconds", "1", "--audit", str(audit))
    body = {"model": "m", "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
            "stream": True, "max_tokens": 1500, "temperature": 0.8, "seed": 1}
    events, t_term = [], None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if t_term is None:
                    proc.send_signal(signal.SIGTERM)
                    t_term = time.monotonic()
    assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    took = time.monotonic() - t_term
    rid = json.loads(events[0])["id"].removeprefix("chatcmpl-")
    import sqlite3

    with sqlite3.connect(audit) as con:
        (finish,) = con.execute("SELECT finish_reason FROM requests WHERE request_id LIKE ?", (rid + "%",)).fetchone()
        actions = [a for (a,) in con.execute("SELECT action FROM decisions WHERE request_id LIKE ?", (rid + "%",))]
    # a story of up to 1,500 tokens outlasts a 1 s drain: it is cancelled, audited, and said to the client
    # with a clean end (an error event, then [DONE]), never a cut connection
    assert finish == "cancelled" and "cancel" in actions, (finish, actions)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
    assert took < 1 + 10


@pytest.mark.slow
def test_two_replicas_under_load_lose_nothing_and_mix_no_sessions(tmp_path, phone_run):
    """32 concurrent streams over two replicas that share Redis and PostgreSQL: every request is
    answered and audited once, and each session holds exactly its own violations."""
    prefix, schema = f"ingate-test-{uuid.uuid4().hex[:8]}", f"ingate_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    pg_url = f"{PG}{'&' if '?' in PG else '?'}options={quote(f'-csearch_path={schema}')}"
    env = dict(os.environ, INGATE_AUDIT_KEY=secrets.token_hex(32))
    flags = ("--sessions", REDIS, "--sessions-prefix", prefix, "--audit", pg_url, "--max-queue", "32")
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(ingate_serve(*flags, env=env | {"INGATE_REPLICA": name}))

        def one(i):
            pii = i % 2 == 0  # half the sessions are asked for the phone number (a redaction each)
            body = {"model": "m", "messages": [{"role": "user", "content": PII_PROMPT if pii else PARIS_PROMPT}],
                    "stream": True, **api_sampling(phone_run[0]), "max_tokens": 24}
            with httpx.stream("POST", procs[i % 2][1] + "/v1/chat/completions", json=body, timeout=600,
                              headers={"X-Session-Id": f"s{i}"}) as r:
                evs = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
            gov = next(e["governance"] for e in evs if "governance" in e)
            return r.status_code, evs[0]["id"].removeprefix("chatcmpl-"), gov

        t0 = time.monotonic()
        with ThreadPoolExecutor(32) as ex:
            out = list(ex.map(one, range(32)))
        elapsed = time.monotonic() - t0
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(30)
    assert all(code == 200 for code, _, _ in out)
    store = RedisSessionStore(REDIS, prefix)
    for i, (_, _, gov) in enumerate(out):
        own = sum(d["action"] == "redact" for d in gov["decisions"])
        st = store.get(f"s{i}")
        assert st is not None and st.violations == own and st.in_flight == 0, (i, own, st)
        assert gov["session"]["id"] == f"s{i}" and gov["session"]["violations"] == own
    assert sum(sum(d["action"] == "redact" for d in g["decisions"]) for _, _, g in out) >= 1, "nothing was redacted"
    with psycopg.connect(pg_url) as con:
        rows = con.execute("SELECT request_id, replica FROM requests").fetchall()
    ids = [r[0][:24] for r in rows]
    assert sorted(ids) == sorted(rid[:24] for _, rid, _ in out)  # each request audited once
    assert {r[1] for r in rows} == {"a", "b"}
    print(f"32 streams over 2 replicas (Redis sessions, PostgreSQL audit): {elapsed:.1f} s")
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f"DROP SCHEMA {schema} CASCADE")
    r = redis_py.Redis.from_url(REDIS)
    for k in r.scan_iter(f"{prefix}:*"):
        r.delete(k)
