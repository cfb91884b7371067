"""The audit trail in PostgreSQL: one queryable record for every replica of a deployment.

`--audit postgresql://USER@HOST:PORT/DB` (psycopg 3, a small connection pool). The promise is the
SQLite log's: a decision row is committed (PostgreSQL's durable commit: `synchronous_commit` as the
server sets it, on by default) before the text it concerns is released. The schema is created at
first start, under an advisory lock so that replicas starting together do not race, with a
version table for later migrations. Every row names the replica that wrote it ($INGATE_REPLICA,
else the host name).

Digests are keyed as in SQLite, and every replica must digest with the same key, so there is no
key file "beside the database": give --audit-key-file, $INGATE_AUDIT_KEY or $INGATE_AUDIT_KEY_FILE.
"""

from __future__ import annotations

import os
import time

from ingate.audit import INSERT_REQUEST, AuditError, AuditLog, load_key, replica_id, request_row
from ingate.gate.decision import Decision

PG_SCHEMA_VERSION = 2  # 2: requests.key_id, the caller's API key id
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingate_audit_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    action TEXT NOT NULL,
    token_index INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    matched_digest TEXT NOT NULL,
    digest_kind TEXT NOT NULL,
    matched_text TEXT,
    detail TEXT NOT NULL,
    replica TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_request ON decisions(request_id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts);
CREATE INDEX IF NOT EXISTS decisions_digest ON decisions(matched_digest);
CREATE TABLE IF NOT EXISTS requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    session TEXT,
    policy TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    decisions INTEGER NOT NULL,
    rollbacks INTEGER NOT NULL,
    elapsed_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    gate_us_p50 DOUBLE PRECISION,
    replica TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts);
ALTER TABLE requests ADD COLUMN IF NOT EXISTS key_id TEXT
"""


def is_postgres(path: object) -> bool:
    return str(path).startswith(("postgresql://", "postgres://"))


class PgAuditLog(AuditLog):
    """AuditLog's interface over PostgreSQL (reads use the same SQL, with psycopg's placeholders)."""

    def __init__(self, url: str, key_file: str | None = None, write: bool = True, pool_size: int = 4):
        import psycopg
        from psycopg_pool import ConnectionPool

        self.path = url  # type: ignore[assignment]  # what the engine core reopens: the URL itself
        self.replica = replica_id()
        self._errors = psycopg.Error
        if write and key_file is None and not (os.environ.get("INGATE_AUDIT_KEY")
                                               or os.environ.get("INGATE_AUDIT_KEY_FILE")):
            raise AuditError("a PostgreSQL audit needs the deployment's key, the same on every replica: pass "
                             "--audit-key-file FILE or set $INGATE_AUDIT_KEY (32+ random bytes)")
        self.key = load_key(None, key_file) if write else None  # type: ignore[arg-type]  # never beside a file
        try:
            self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=True, timeout=10,
                                        kwargs={"autocommit": True, "connect_timeout": 5})
            self._pool.wait(timeout=10)
            self._migrate()
        except Exception as e:  # psycopg's and the pool's errors: one line that says what to fix
            raise AuditError(f"cannot open the PostgreSQL audit {_safe(url)}: {type(e).__name__}: {e}") from None

    def _migrate(self) -> None:
        with self._pool.connection() as con, con.transaction():
            con.execute("SELECT pg_advisory_xact_lock(hashtext('ingate audit schema'))")
            for stmt in PG_SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT max(version) FROM ingate_audit_schema").fetchone()
            if row is not None and row[0] is not None and row[0] > PG_SCHEMA_VERSION:
                raise AuditError(f"the audit schema is version {row[0]}, newer than this ingate "
                                 f"({PG_SCHEMA_VERSION}); upgrade ingate")
            if row is None or row[0] is None or row[0] < PG_SCHEMA_VERSION:
                con.execute("INSERT INTO ingate_audit_schema (version) VALUES (%s)", (PG_SCHEMA_VERSION,))

    def record(self, request_id: str, policy: str, decisions: list[Decision], store_text: bool = False) -> None:
        if not decisions:
            return
        now = time.time()
        rows = []
        for d in decisions:
            digest, kind = self.digest(d.matched)
            rows.append((now, request_id, policy, d.rule_id, d.action, d.token_index, d.byte_offset, digest, kind,
                         d.matched.decode("utf-8", errors="replace") if store_text else None, d.detail,
                         self.replica))
        with self._pool.connection() as con, con.transaction(), con.cursor() as cur:  # committed on exit
            cur.executemany(
                "INSERT INTO decisions (ts, request_id, policy, rule_id, action, token_index, byte_offset,"
                " matched_digest, digest_kind, matched_text, detail, replica) VALUES"
                " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)

    def record_request(self, request_id: str, policy: str, result, session: str | None = None,
                       key_id: str | None = None) -> None:
        with self._pool.connection() as con:
            con.execute(INSERT_REQUEST.replace("?", "%s"),
                        request_row(self.replica, request_id, policy, result, session, key_id))

    def scrub_unkeyed(self) -> int:
        return 0  # a PostgreSQL audit never held the plain digests of versions before the keyed one

    def _rows(self, sql: str, args: tuple) -> list[dict]:
        with self._pool.connection() as con, con.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), args)
            cols = [c.name for c in cur.description or []]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        self._pool.close()


def _safe(url: str) -> str:
    """The URL without a password."""
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, _, cred = head.partition("://")
    return f"{scheme}://{cred.split(':')[0]}@{tail}"
