"""The audit in SQLite (WAL, `synchronous=FULL`): embedded and durable, the default.

Each write is committed (fsync'd) before it returns. The schema is versioned (`PRAGMA
user_version`) and migrated in one transaction at open:
  0 -> kept plain SHA-256 digests: they are marked `sha256-unkeyed`, never passed off as keyed
       (`ingate audit scrub` blanks them);
  1 -> 2: every row names the replica that wrote it (rows of version 1 have '');
  2 -> 3: a request row names the caller's API key id (NULL: auth off, or written before).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from ingate.paths import state_dir
from ingate.store.audit.base import (
    EMPTY_SHA256,
    NOTHING,
    TABLES,
    UNKEYED,
    AuditLog,
    column_sql,
    create_statements,
    create_table,
    insert_sql,
    replica_id,
)
from ingate.store.audit.keys import AuditError, load_key

SCHEMA_VERSION = 3


def default_audit_path() -> Path:
    env = os.environ.get("INGATE_AUDIT")
    return Path(env) if env else state_dir() / "audit.sqlite3"


class SqliteAudit(AuditLog):
    def __init__(self, path: str | Path | None = None, key_file: str | Path | None = None, write: bool = True):
        self.path = Path(path) if path else default_audit_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except (OSError, sqlite3.Error) as e:
            raise AuditError(f"cannot open audit log {str(self.path)!r}: {e}; pass --audit PATH to a "
                             "writable file") from None
        self.key = load_key(self.path, key_file) if write else None
        self.replica = replica_id()
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Create the schema, or bring an older one to this version, in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and "matched_sha256" in self._columns("decisions"):
                self._from_v0()
            for stmt in create_statements("sqlite"):
                db.execute(stmt)
            for table, cols in TABLES.items():  # columns later versions added
                have = self._columns(table)
                for c in cols:
                    if c.name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column_sql(c, 'sqlite')}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _columns(self, table: str) -> list[str]:
        return [r[1] for r in self._db.execute(f"PRAGMA table_info({table})")]

    def _from_v0(self) -> None:
        """Version 0 kept plain SHA-256 digests: mark them as such, never relabel them as keyed."""
        db = self._db
        db.execute("ALTER TABLE decisions RENAME TO decisions_v0")
        db.execute("DROP INDEX IF EXISTS decisions_request")
        db.execute("DROP INDEX IF EXISTS decisions_ts")
        db.execute(create_table("decisions", "sqlite"))
        db.execute(
            "INSERT INTO decisions (id, ts, request_id, policy, rule_id, action, token_index, byte_offset,"
            " matched_digest, digest_kind, matched_text, detail) SELECT id, ts, request_id, policy, rule_id,"
            " action, token_index, byte_offset, CASE WHEN matched_sha256 = ? THEN '' ELSE matched_sha256 END,"
            " CASE WHEN matched_sha256 = ? THEN ? ELSE ? END, matched_text, detail FROM decisions_v0",
            (EMPTY_SHA256, EMPTY_SHA256, NOTHING, UNKEYED))
        db.execute("DROP TABLE decisions_v0")

    def _insert(self, table: str, rows: list[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(insert_sql(table), rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, args: tuple) -> list[dict]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def scrub_unkeyed(self) -> int:
        with self._lock:
            cur = self._db.execute("UPDATE decisions SET matched_digest = '', digest_kind = ? WHERE digest_kind = ?",
                                   (UNKEYED + " (scrubbed)", UNKEYED))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
