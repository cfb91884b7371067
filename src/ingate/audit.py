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

    def tail(self, n: int = 20) -> list[dict]:
        with self._lock:
            cur = self._db.execute("SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (n,))
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        return rows[::-1]

    def close(self) -> None:
        with self._lock:
            self._db.close()
