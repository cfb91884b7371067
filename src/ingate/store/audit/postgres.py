"""The audit in PostgreSQL: one queryable record for every replica of a deployment.

`--audit postgresql://USER@HOST:PORT/DB` (psycopg 3, a small connection pool). The promise is the
SQLite log's: a decision row is committed (PostgreSQL's durable commit: `synchronous_commit` as the
server sets it, on by default) before the text it concerns is released. The schema is created at
first start, under an advisory lock so that replicas starting together do not race, with a
version table for later migrations (2: requests.key_id). Every row names the replica that wrote it.

Digests are keyed as in SQLite, and every replica must digest with the same key, so there is no
key file "beside the database": give --audit-key-file, $INGATE_AUDIT_KEY or $INGATE_AUDIT_KEY_FILE.
"""

from __future__ import annotations

import os

from ingate.extras import require
from ingate.store.audit.base import TABLES, AuditLog, column_sql, create_statements, insert_sql, replica_id
from ingate.store.audit.keys import AuditError, load_key

PG_SCHEMA_VERSION = 2


def is_postgres(path: object) -> bool:
    return str(path).startswith(("postgresql://", "postgres://"))


class PgAudit(AuditLog):
    def __init__(self, url: str, key_file: str | None = None, write: bool = True, pool_size: int = 4):
        psycopg = require("psycopg")
        ConnectionPool = require("psycopg_pool").ConnectionPool

        self.path = url  # what the engine core reopens: the URL itself
        self.replica = replica_id()
        self._errors = psycopg.Error
        if write and key_file is None and not (os.environ.get("INGATE_AUDIT_KEY")
                                               or os.environ.get("INGATE_AUDIT_KEY_FILE")):
            raise AuditError("a PostgreSQL audit needs the deployment's key, the same on every replica: pass "
                             "--audit-key-file FILE or set $INGATE_AUDIT_KEY (32+ random bytes)")
        self.key = load_key(None, key_file) if write else None
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
            con.execute("CREATE TABLE IF NOT EXISTS ingate_audit_schema (version INTEGER NOT NULL)")
            row = con.execute("SELECT max(version) FROM ingate_audit_schema").fetchone()
            have = row[0] if row is not None else None
            if have is not None and have > PG_SCHEMA_VERSION:
                raise AuditError(f"the audit schema is version {have}, newer than this ingate "
                                 f"({PG_SCHEMA_VERSION}); upgrade ingate")
            for stmt in create_statements("postgres"):
                con.execute(stmt)
            for table, cols in TABLES.items():  # columns later versions added
                for c in cols:
                    if c.type != "id":
                        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column_sql(c, 'postgres')}")
            if have is None or have < PG_SCHEMA_VERSION:
                con.execute("INSERT INTO ingate_audit_schema (version) VALUES (%s)", (PG_SCHEMA_VERSION,))

    def _insert(self, table: str, rows: list[tuple]) -> None:
        with self._pool.connection() as con, con.transaction(), con.cursor() as cur:  # committed on exit
            cur.executemany(insert_sql(table, "%s"), rows)

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
