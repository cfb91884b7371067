"""The audit in PostgreSQL, against the real server on 127.0.0.1:5432 (database `test`, trust auth).

Each test writes into a schema of its own (search_path), so runs never see each other's rows. Where
PostgreSQL is not reachable on a developer's machine these tests fail and say so: never skipped.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import uuid
from urllib.parse import quote

import httpx
import psycopg
import pytest

from conftest import INGATE, PII_PROMPT, api_sampling
from ingate.drivers.base import Result
from ingate.gate.decision import Action, Decision
from ingate.store.audit import AuditError, open_audit
from ingate.store.audit.postgres import PgAudit as PgAuditLog

PG = os.environ.get("INGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    """A URL whose tables live in a fresh schema, dropped after the test."""
    schema = f"ingate_test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG, autocommit=True, connect_timeout=5) as con:
            con.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as e:
        pytest.fail(f"PostgreSQL at {PG} is not reachable ({e}): these tests need a real PostgreSQL (CI machines "
                    "run one on 127.0.0.1:5432; set INGATE_TEST_POSTGRES to use another)")
    sep = "&" if "?" in PG else "?"
    yield f"{PG}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("INGATE_AUDIT_KEY", secrets.token_hex(32))
    monkeypatch.setenv("INGATE_REPLICA", "replica-a")


def test_decisions_and_requests_round_trip_and_name_their_replica(pg_url, key):
    log = open_audit(pg_url)
    assert isinstance(log, PgAuditLog)
    d = Decision("pii", Action.REDACT, 3, 12, b"415-555-0132", "redacted one phone")
    log.record("req-1", "default", [d, Decision("pii", Action.REDACT, 5, 30, b"a@b.io", "redacted one email")])
    log.record_request("req-1", "default", Result(text="x", finish_reason="stop", decisions=[d], completion_tokens=7),
                       session="alice")
    found = log.find("415-555-0132")
    assert [(r["request_id"], r["rule_id"], r["replica"]) for r in found] == [("req-1", "pii", "replica-a")]
    assert found[0]["matched_text"] is None and found[0]["digest_kind"] == log.key.kind  # keyed, text not kept
    assert [r["byte_offset"] for r in log.tail(5)] == [12, 30]
    kinds = [r["kind"] for r in log.export()]
    assert kinds.count("decision") == 2 and kinds.count("request") == 1
    log.close()


def test_replicas_opening_together_create_the_schema_once(pg_url, key):
    logs, errors = [], []

    def open_one():
        try:
            logs.append(open_audit(pg_url))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(logs) == 4
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT count(*), max(version) FROM ingate_audit_schema").fetchone() == (1, 2)
    for log in logs:
        log.close()


def test_a_version_1_schema_gains_the_key_id_column(pg_url, key):
    """An audit written before keys had ids: its rows stay, new request rows name their key id."""
    from ingate.store.audit.base import create_statements

    with psycopg.connect(pg_url, autocommit=True) as con:  # version 1: no key_id column
        con.execute("CREATE TABLE ingate_audit_schema (version INTEGER NOT NULL)")
        for stmt in create_statements("postgres"):
            con.execute(stmt)
        con.execute("ALTER TABLE requests DROP COLUMN key_id")
        con.execute("INSERT INTO ingate_audit_schema (version) VALUES (1)")
    log = open_audit(pg_url)
    log.record_request("req-2", "default", Result(text="x", finish_reason="stop"), session="s", key_id="acme-web")
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT max(version) FROM ingate_audit_schema").fetchone() == (2,)
        assert con.execute("SELECT request_id, key_id FROM requests").fetchall() == [("req-2", "acme-web")]
    log.close()


def test_a_postgres_audit_without_a_shared_key_says_what_to_fix(pg_url, monkeypatch):
    monkeypatch.delenv("INGATE_AUDIT_KEY", raising=False)
    monkeypatch.delenv("INGATE_AUDIT_KEY_FILE", raising=False)
    with pytest.raises(AuditError, match="needs the deployment's key, the same on every replica"):
        open_audit(pg_url)
    with pytest.raises(AuditError, match="cannot open the PostgreSQL audit postgresql://nobody@127.0.0.1:1/"):
        open_audit("postgresql://nobody:secret@127.0.0.1:1/x", write=False)


def test_audit_tail_and_export_read_the_postgres_audit(pg_url, key):
    log = open_audit(pg_url)
    log.record("req-9", "default", [Decision("tower", Action.PREVENT, 1, 4, b"Eiffel", "phrase 'Eiffel'")])
    log.close()
    out = subprocess.run([INGATE, "audit", "tail", "--audit", pg_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "default/tower prevent" in out.stdout, out.stderr
    out = subprocess.run([INGATE, "audit", "export", "--audit", pg_url], capture_output=True, text=True, timeout=60)
    assert [json.loads(ln)["request_id"] for ln in out.stdout.splitlines()] == ["req-9"]


@pytest.mark.slow
def test_sigkill_mid_stream_loses_no_decision_whose_text_was_released(pg_url, key, tmp_path, phone_run):
    """A replica killed in the middle of a stream: every redaction the client saw is in the table."""
    from upstreams import ingate_serve

    proc, url = ingate_serve(env=dict(os.environ, INGATE_AUDIT=pg_url), ready="/healthz")
    body = {"model": "m", "messages": [{"role": "user", "content": PII_PROMPT}], "stream": True,
            **api_sampling(phone_run[0]), "max_tokens": 256}
    seen, rid = "", None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            ev = json.loads(line[6:])
            rid = rid or ev["id"].removeprefix("chatcmpl-")
            seen += "".join((c.get("delta") or {}).get("content") or "" for c in ev.get("choices", []))
            if "[PHONE]" in seen:
                proc.send_signal(signal.SIGKILL)  # mid-stream: the rest of the response is never sent
                break
    proc.wait(10)
    assert "[PHONE]" in seen, "the stream never showed a redaction: nothing was tested"
    with psycopg.connect(pg_url) as con:
        rows = con.execute("SELECT action, replica FROM decisions WHERE request_id LIKE %s", (rid + "%",)).fetchall()
    assert ("redact", "replica-a") in rows
