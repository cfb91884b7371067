"""Tenants cannot touch each other's sessions: a session belongs to the tenant of the key that
opened it, in memory and in Redis, on one replica and across two. And the keys' configuration:
spec strings and keys files, with errors that say what to fix."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid

import pytest

from conftest import PII_PROMPT, api_sampling, policy
from ingate.keys import Grant, Keys, KeysError, derived_id, load_file

ESCALATING = """version: 1
name: strict
session: {escalate_after: 2, refusal: "No more."}
rules:
  - id: pii
    forbid: {patterns: [phone]}
    action: redact
"""


def test_a_session_key_is_scoped_by_tenant_and_no_name_can_spell_another_tenants():
    a, b = Grant(key_id="a", tenant="acme"), Grant(key_id="b", tenant="bravo")
    assert a.session_key("alice") != b.session_key("alice")
    # whatever a client of bravo names its session, it is bravo's
    for forged in ("acme\0alice", "\0acme\0alice", "alice", "acme/alice"):
        assert b.session_key(forged) != a.session_key("alice")
        assert b.session_key(forged).startswith("bravo\0")
    assert Grant().session_key("alice") == "alice"  # auth off: one tenant, as before


def test_key_specs_name_keys_by_a_fingerprint_never_the_key():
    keys = Keys.from_specs(["sekret", "narrow:p1+p2", "auditor::full"])
    g = keys.lookup("narrow")
    assert g is not None and g.policies == frozenset({"p1", "p2"}) and g.detail is None
    assert g.key_id == derived_id("narrow") and "narrow" not in g.key_id and g.tenant == g.key_id
    assert keys.lookup("auditor").detail == "full"
    assert keys.lookup("wrong") is None and keys.lookup("") is None
    assert "sekret" not in repr(keys.by_digest)  # only digests are kept
    with pytest.raises(KeysError, match="no key"):
        Keys.from_specs([":p1"])
    with pytest.raises(KeysError, match="configured twice"):
        Keys.from_specs(["same", "same:p1"])


def test_a_keys_file_maps_keys_to_tenants(tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_WEB", "web-secret-1")
    f = tmp_path / "keys.yaml"
    f.write_text(f"""keys:
  - {{id: acme-web, key_env: ACME_WEB, tenant: acme}}
  - {{id: acme-batch, key: batch-secret-2, tenant: acme, policies: [default], detail: full}}
  - {{id: bravo, key_sha256: {hashlib.sha256(b"bravo-secret-3").hexdigest()}}}
""")
    keys = Keys.from_specs([], f)
    web, batch, bravo = keys.lookup("web-secret-1"), keys.lookup("batch-secret-2"), keys.lookup("bravo-secret-3")
    assert (web.key_id, web.tenant) == ("acme-web", "acme") and (batch.key_id, batch.tenant) == ("acme-batch", "acme")
    assert batch.policies == frozenset({"default"}) and batch.detail == "full"
    assert (bravo.key_id, bravo.tenant) == ("bravo", "bravo")
    assert web.session_key("s") == batch.session_key("s") != bravo.session_key("s")
    with pytest.raises(KeysError, match="unknown policy 'default'"):
        keys.check_policies(["strict"])


@pytest.mark.parametrize("body, message", [
    ("keys: {}", "a 'keys' list"),
    ("keys: [{key: x}]", r"keys\[0\].id"),
    ("keys: [{id: 'a b', key: x}]", r"keys\[0\].id"),
    ("keys: [{id: a}]", "exactly one of key, key_env, key_sha256"),
    ("keys: [{id: a, key: x, key_env: Y}]", "exactly one of"),
    ("keys: [{id: a, key_env: INGATE_TEST_NOT_SET}]", "INGATE_TEST_NOT_SET is not set"),
    ("keys: [{id: a, key_sha256: abc}]", "64 hex digits"),
    ("keys: [{id: a, key: x, tenant: 'x\\0y'}]", "tenant"),
    ("keys: [{id: a, key: x, detail: everything}]", "minimal, full"),
    ("keys: [{id: a, key: x, quota: 3}]", "unknown field 'quota'"),
    ("keys: [{id: a, key: x}, {id: a, key: y}]", "two keys have the id 'a'"),
    ("keys: [", "not valid YAML"),
])
def test_a_bad_keys_file_names_the_entry_and_the_fix(tmp_path, body, message):
    f = tmp_path / "keys.yaml"
    f.write_text(body)
    with pytest.raises(KeysError, match=message):
        Keys.from_specs([], f)


def test_a_missing_keys_file_is_named():
    with pytest.raises(KeysError, match="no-such-keys.yaml"):
        load_file("/nonexistent/no-such-keys.yaml")


def _escalate_over(post, phone_params) -> None:
    """Key B's client sends `alice` the phone prompt until its own alice is refused; then key A's
    alice must be served with a clean session, and neither report shows the other's state."""
    body = {"model": "m", "messages": [{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_params)}
    for _ in range(2):
        r = post("B", body)
        assert "[PHONE]" in r["choices"][0]["message"]["content"], r
    r = post("B", body)
    assert r["choices"][0]["message"]["content"] == "No more.", "B's own session must escalate"
    assert r["governance"]["session"]["violations"] == 2
    r = post("A", body)
    assert r["choices"][0]["message"]["content"] != "No more.", "key B escalated key A's session"
    assert "[PHONE]" in r["choices"][0]["message"]["content"]
    assert r["governance"]["session"] == {"id": "alice", "violations": 1, "escalate_after": 2, "entropy_spent": 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("store", ["memory", "redis"])
def test_one_tenant_cannot_escalate_or_read_anothers_session(runtime, phone_run, store):
    from fastapi.testclient import TestClient

    from ingate.server import ServerConfig, create_app
    from ingate.store.sessions.redis import RedisSessionStore
    from test_leaks import _Borrowed
    from test_sessions import REDIS

    prefix = f"ingate-test-{uuid.uuid4().hex[:8]}"
    sessions = RedisSessionStore(REDIS, prefix, ttl=60) if store == "redis" else None
    keys = Keys.from_specs(["key-of-a", "key-of-b"])
    app = create_app(_Borrowed(runtime), ServerConfig(policies={"strict": policy(ESCALATING)}, api_keys=keys,
                                                      sessions=sessions))
    bearer = {"A": "key-of-a", "B": "key-of-b"}
    with TestClient(app) as c:
        def post(who, body):
            r = c.post("/v1/chat/completions", json=body,
                       headers={"Authorization": f"Bearer {bearer[who]}", "X-Session-Id": "alice"})
            assert r.status_code == 200, r.text
            return r.json()

        _escalate_over(post, phone_run[0])
    with sqlite3.connect(runtime.audit.path) as con:
        rows = con.execute("SELECT key_id, session FROM requests ORDER BY id DESC LIMIT 4").fetchall()
    assert {k for k, _ in rows} == {derived_id("key-of-a"), derived_id("key-of-b")}
    assert all(s == "alice" for _, s in rows)
    if sessions is not None:
        for k in sessions.r.scan_iter(f"{prefix}:*"):
            sessions.r.delete(k)


@pytest.mark.slow
def test_two_keys_over_two_replicas_sharing_redis_keep_their_sessions_apart(tmp_path, phone_run):
    """The issue's scenario, as a new user would meet it: two keys on the same policy, two real
    replicas sharing Redis; key B's client escalates its `alice` on replica b, key A's `alice` is
    still served on replica a. Keys of one tenant (a keys file) share a session across replicas."""
    import httpx

    from test_sessions import two_replicas

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {id: a-web, key: key-of-a, tenant: acme}\n  - {id: a-batch, key: key-of-a2, "
                    "tenant: acme}\n  - {id: b, key: key-of-b}\n")
    bearer = {"A": "key-of-a", "A2": "key-of-a2", "B": "key-of-b"}
    with two_replicas(tmp_path, ESCALATING, "--keys", str(keys)) as (a, b, _):
        def post(who, body):
            srv = b if who == "B" else a
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=300,
                           headers={"Authorization": f"Bearer {bearer[who]}", "X-Session-Id": "alice"})
            assert r.status_code == 200, r.text
            return r.json()

        _escalate_over(post, phone_run[0])
        # the same tenant's other key, on the other replica, sees acme's alice (one violation so far)
        body = {"model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
        r = httpx.post(b.url + "/v1/chat/completions", json=body, timeout=300,
                       headers={"Authorization": "Bearer key-of-a2", "X-Session-Id": "alice"}).json()
        assert r["governance"]["session"]["violations"] == 1
        audits = [sqlite3.connect(s.audit).execute("SELECT key_id FROM requests").fetchall() for s in (a, b)]
    ids = {k for rows in audits for (k,) in rows}
    assert ids == {"a-web", "a-batch", "b"}
    for s in (a, b):
        dump = "\n".join(sqlite3.connect(s.audit).iterdump())
        assert "key-of-a" not in dump and "key-of-b" not in dump  # the audit names keys, never holds them
