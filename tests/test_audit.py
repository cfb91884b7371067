"""The audit keeps keyed digests, never a plain hash of what it withheld: key handling, migration of
audits written by earlier versions, lookups, and the client report that discloses nothing."""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import stat

import pytest

from ingate.drivers.base import Result
from ingate.gate.decision import Decision
from ingate.policy import NONE_POLICY
from ingate.report import decision, governance, public_detail
from ingate.store.audit import SCHEMA_VERSION, AuditError, load_key
from ingate.store.audit import SqliteAudit as AuditLog

PHONE = b"415-555-0132"


def redaction(value: bytes = PHONE) -> Decision:
    return Decision("pii", "redact", 4, 12, value, "phone replaced by [PHONE]", "redacted one phone")


@pytest.fixture(autouse=True)
def no_key_env(monkeypatch):
    for k in ("INGATE_AUDIT_KEY", "INGATE_AUDIT_KEY_FILE"):
        monkeypatch.delenv(k, raising=False)


def test_a_key_is_made_at_first_start_beside_the_audit_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path)
    key_file = tmp_path / "audit.sqlite3.key"
    assert log.key.source == str(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_text().strip()) == 64  # 32 random bytes, hex
    first_id = log.key.id
    log.close()
    again = AuditLog(path)
    assert again.key.id == first_id  # reused, not regenerated
    again.close()


def test_digests_are_hmacs_under_the_key_and_no_plain_hash_or_value_reaches_the_file(tmp_path):
    path = tmp_path / "audit.sqlite3"
    log = AuditLog(path)
    log.record("r1", "p", [redaction()])
    log.record("r2", "p", [redaction()])
    log.record("r3", "p", [redaction(b"415-555-0199")])
    rows = log.tail(3)
    secret = (tmp_path / "audit.sqlite3.key").read_bytes().strip()
    assert rows[0]["matched_digest"] == hmac.new(secret, PHONE, hashlib.sha256).hexdigest()
    assert rows[0]["digest_kind"] == f"hmac-sha256:{log.key.id}"
    assert rows[0]["matched_digest"] == rows[1]["matched_digest"] != rows[2]["matched_digest"]  # correlates
    assert [r["request_id"] for r in log.find("415-555-0132")] == ["r1", "r2"]
    log.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("audit.sqlite3*") if not p.name.endswith(".key"))
    for leak in (PHONE, hashlib.sha256(PHONE).hexdigest().encode(), hashlib.md5(PHONE).hexdigest().encode()):
        assert leak not in raw


def test_another_key_gives_other_digests(tmp_path, monkeypatch):
    a = AuditLog(tmp_path / "a.sqlite3")
    monkeypatch.setenv("INGATE_AUDIT_KEY", "an-operator-chosen-secret-of-some-length")
    b = AuditLog(tmp_path / "b.sqlite3")
    assert b.key.source == "$INGATE_AUDIT_KEY" and not (tmp_path / "b.sqlite3.key").exists()
    assert a.digest(PHONE)[0] != b.digest(PHONE)[0] and a.digest(PHONE)[1] != b.digest(PHONE)[1]
    assert a.digest(b"") == ("", "none")


@pytest.mark.parametrize("setup,words", [
    ("short-env", "use at least 16 random bytes"),
    ("world-readable", "chmod 600"),
    ("missing-file", "does not exist"),
    ("short-file", "at least 16 random bytes"),
])
def test_a_bad_key_is_refused_with_what_to_do(tmp_path, monkeypatch, setup, words):
    key_file = tmp_path / "k"
    if setup == "short-env":
        monkeypatch.setenv("INGATE_AUDIT_KEY", "short")
        key_file = None
    elif setup == "world-readable":
        key_file.write_text("x" * 64)
        os.chmod(key_file, 0o644)
    elif setup == "short-file":
        key_file.write_text("abc")
        os.chmod(key_file, 0o600)
    with pytest.raises(AuditError, match=words):
        load_key(tmp_path / "audit.sqlite3", key_file)


V0 = """
CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL,
    policy TEXT NOT NULL, rule_id TEXT NOT NULL, action TEXT NOT NULL, token_index INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL, matched_sha256 TEXT NOT NULL, matched_text TEXT, detail TEXT NOT NULL);
CREATE INDEX decisions_request ON decisions(request_id);
CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL,
    session TEXT, policy TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL, decisions INTEGER NOT NULL, rollbacks INTEGER NOT NULL, elapsed_ms REAL NOT NULL,
    ttft_ms REAL, gate_us_p50 REAL);
"""


def test_an_audit_of_the_earlier_version_is_migrated_and_its_plain_digests_are_marked_not_keyed(tmp_path):
    path = tmp_path / "audit.sqlite3"
    with sqlite3.connect(path) as con:
        con.executescript(V0)
        con.execute("INSERT INTO decisions VALUES (1, 1.0, 'old', 'p', 'pii', 'redact', 4, 12, ?, NULL, 'd')",
                    (hashlib.sha256(PHONE).hexdigest(),))
        con.execute("INSERT INTO decisions VALUES (2, 2.0, 'old', 'p', 'client', 'cancel', 9, 40, ?, NULL, 'c')",
                    (hashlib.sha256(b"").hexdigest(),))
        con.execute("INSERT INTO requests VALUES (1, 1.0, 'old', NULL, 'p', 10, 5, 'stop', 2, 0, 12.0, 3.0, 50.0)")
    log = AuditLog(path)
    log.record("new", "p", [redaction()])
    rows = {(r["request_id"], r["action"]): r for r in log.tail(10)}
    assert rows[("old", "redact")]["digest_kind"] == "sha256-unkeyed"
    assert rows[("old", "redact")]["matched_digest"] == hashlib.sha256(PHONE).hexdigest()  # kept, and labelled
    assert rows[("old", "cancel")]["digest_kind"] == "none" and rows[("old", "cancel")]["matched_digest"] == ""
    assert rows[("new", "redact")]["digest_kind"].startswith("hmac-sha256:")
    assert [r["request_id"] for r in log.export() if r["kind"] == "request"] == ["old"]
    assert log.scrub_unkeyed() == 1
    scrubbed = next(r for r in log.tail(10) if r["request_id"] == "old" and r["action"] == "redact")
    assert scrubbed["matched_digest"] == "" and scrubbed["digest_kind"] == "sha256-unkeyed (scrubbed)"
    log.close()
    again = AuditLog(path)  # opening a migrated audit again changes nothing
    assert len(again.tail(10)) == 3
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_readers_need_no_key(tmp_path):
    AuditLog(tmp_path / "audit.sqlite3").close()
    (tmp_path / "audit.sqlite3.key").unlink()
    reader = AuditLog(tmp_path / "audit.sqlite3", write=False)
    assert reader.key is None and reader.tail() == []
    assert not (tmp_path / "audit.sqlite3.key").exists()


# ---- the client's report ----------------------------------------------------------------------------
WITHHELD = [
    Decision("codename", "prevent", 0, 0, b"Project Nightingale",
             "phrase 'Project Nightingale': held partial match rolled back 2 token(s) and resampled"),
    Decision("codename", "redact", 3, 10, b"Project Nightingale", "'Project Nightingale' replaced by [REDACTED]"),
    Decision("codename", "stop", 3, 10, b"Project Nightingale", "matched phrase 'Project Nightingale'; stream ended"),
    Decision("no-bombs", "resample", 9, 50, b"Mix the fertilizer",
             "semantic: group of 5 token(s) scored 0.733 >= 0.45 (concept 'explosives'); rolled back"),
    Decision("no-bombs", "refuse", 0, 0, b"how do I build a bomb",
             "semantic input check: prompt scored 0.8 (concept 'explosives')"),
    Decision("uncertainty", "abstain", 7, 30, b"", "response entropy budget 6 spent (6.2 nats over baseline 0.5)"),
    Decision("ingate", "error", 7, 30, b"", "RuntimeError: regex 'Project Nightingale' blew up"),
    redaction(),
]


@pytest.mark.parametrize("d", WITHHELD, ids=lambda d: d.action)
def test_a_minimal_report_says_what_was_done_and_nothing_that_was_withheld(d):
    shown = decision(d, "minimal", store_text=True)  # even when the policy keeps text for the audit
    assert set(shown) == {"rule", "action", "token_index", "byte_offset", "detail"}
    text = repr(shown).lower()
    for leak in ("nightingale", "fertilizer", "build a", "explosives", "0.733", "0.8", PHONE.decode(),
                 hashlib.sha256(d.matched).hexdigest(), hashlib.md5(d.matched).hexdigest()):
        assert leak not in text, leak
    assert shown["detail"] == public_detail(d)


def test_a_full_report_adds_the_internal_detail_and_the_text_only_when_the_policy_keeps_it():
    full = decision(WITHHELD[0], "full", store_text=False)
    assert full["internal_detail"] == WITHHELD[0].detail and "matched" not in full
    assert decision(WITHHELD[0], "full", store_text=True)["matched"] == "Project Nightingale"
    assert decision(redaction(), "minimal", store_text=False)["detail"] == "redacted one phone"


def test_the_report_drops_semantic_scores_unless_full():
    res = Result(text="x", finish_reason="stop", completion_tokens=1, elapsed_s=0.1, ttft_s=0.01, gate_us=[1.0],
                 semantic={"groups": 2, "rejected": 1, "max_score": {"explosives": 0.44}})
    assert "max_score" not in governance(NONE_POLICY, res, "minimal")["semantic"]
    assert governance(NONE_POLICY, res, "full")["semantic"]["max_score"] == {"explosives": 0.44}


def test_a_version_1_audit_gains_the_replica_column_and_new_rows_name_their_replica(tmp_path, monkeypatch):
    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as con:  # the version 1 schema, as written before replica ids
        con.executescript(V1_SCHEMA)
        con.execute("INSERT INTO decisions (ts, request_id, policy, rule_id, action, token_index, byte_offset,"
                    " matched_digest, digest_kind, matched_text, detail)"
                    " VALUES (0, 'old', 'p', 'r', 'redact', 0, 0, '', 'none', NULL, 'd')")
        con.execute("PRAGMA user_version = 1")
    monkeypatch.setenv("INGATE_REPLICA", "replica-x")
    log = AuditLog(path)
    log.record("new", "p", [Decision("r", "redact", 0, 0, b"", "d")])
    assert [(r["request_id"], r["replica"]) for r in log.tail(5)] == [("old", ""), ("new", "replica-x")]
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


V1_SCHEMA = """
CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL,
    policy TEXT NOT NULL, rule_id TEXT NOT NULL, action TEXT NOT NULL, token_index INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL, matched_digest TEXT NOT NULL, digest_kind TEXT NOT NULL, matched_text TEXT,
    detail TEXT NOT NULL);
CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, request_id TEXT NOT NULL,
    session TEXT, policy TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL, decisions INTEGER NOT NULL, rollbacks INTEGER NOT NULL, elapsed_ms REAL NOT NULL,
    ttft_ms REAL, gate_us_p50 REAL);
"""
