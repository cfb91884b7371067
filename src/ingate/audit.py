"""The audit trail: every decision, durable in SQLite (WAL) before its text is released.

Matched text is stored as a SHA-256 unless the policy sets `audit: {store_text: true}`: the
trail proves what was governed without becoming a second copy of the data it kept out.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from ingate.gate.gate import Decision

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    action TEXT NOT NULL,
    token_index INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    matched_sha256 TEXT NOT NULL,
    matched_text TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_request ON decisions(request_id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    session TEXT,
    policy TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    decisions INTEGER NOT NULL,
    rollbacks INTEGER NOT NULL,
    elapsed_ms REAL NOT NULL,
    ttft_ms REAL,
    gate_us_p50 REAL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
"""


def default_audit_path() -> Path:
    env = os.environ.get("INGATE_AUDIT")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ingate" / "audit.sqlite3"


class AuditError(RuntimeError):
    pass


class AuditLog:
    """Append-only decision log. Each write is committed (fsync'd) before it returns."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_audit_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise AuditError(f"cannot open audit log {str(self.path)!r}: {e}; pass --audit PATH to a "
                             "writable file") from None
        self._lock = threading.Lock()

    def record(self, request_id: str, policy: str, decisions: list[Decision], store_text: bool = False) -> None:
        if not decisions:
            return
        now = time.time()
        rows = [(now, request_id, policy, d.rule_id, d.action, d.token_index, d.byte_offset,
                 hashlib.sha256(d.matched).hexdigest(),
                 d.matched.decode("utf-8", errors="replace") if store_text else None, d.detail)
                for d in decisions]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO decisions (ts, request_id, policy, rule_id, action, token_index, byte_offset,"
                    " matched_sha256, matched_text, detail) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_request(self, request_id: str, policy: str, result, session: str | None = None) -> None:
        """One row per generation, committed before the response's last byte is sent."""
        st = result.stats()
        row = (time.time(), request_id, session, policy, result.prompt_tokens, result.completion_tokens,
               result.finish_reason, len(result.decisions), result.rollbacks, round(result.elapsed_s * 1000, 2),
               st["ttft_ms"], st["gate_us_p50"])
        with self._lock:
            self._db.execute("INSERT INTO requests (ts, request_id, session, policy, prompt_tokens, completion_tokens,"
                             " finish_reason, decisions, rollbacks, elapsed_ms, ttft_ms, gate_us_p50)"
                             " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

    def export(self, since: float = 0.0) -> list[dict]:
        """Requests and decisions since a Unix time, oldest first, each tagged with its kind."""
        out: list[dict] = []
        with self._lock:
            for kind in ("request", "decision"):
                cur = self._db.execute(f"SELECT * FROM {kind}s WHERE ts >= ? ORDER BY id", (since,))
                cols = [c[0] for c in cur.description]
                out += [{"kind": kind, **dict(zip(cols, r, strict=True))} for r in cur.fetchall()]
        return sorted(out, key=lambda r: (r["ts"], r["kind"] != "decision"))

    def tail(self, n: int = 20) -> list[dict]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (n,))
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return rows[::-1]

    def close(self) -> None:
        with self._lock:
            self._db.close()
