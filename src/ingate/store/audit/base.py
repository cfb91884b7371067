"""The audit trail's one protocol: every decision, durable before its text is released.

Matched text is kept as an HMAC-SHA256 digest under the deployment's secret key
(`ingate.store.audit.keys`) unless the policy sets `audit: {store_text: true}`. A plain SHA-256
of a short value is no protection: the 10^7 phone numbers of one area code hash in seconds.

Two tables, written by every backend from one column list (`TABLES`), rendered in each SQL
dialect by `create_statements`:
  decisions  one row per decision (rule, action, position, digest, detail)
  requests   one row per generation (tokens, finish_reason, timings, the session, the key id)
Every row names the replica that wrote it. A backend (SQLite, PostgreSQL) subclasses `AuditLog`
and implements how rows are written and read; what the rows hold is decided here, once.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ingate.gate.decision import Decision
from ingate.store.audit.keys import AuditError, AuditKey

UNKEYED = "sha256-unkeyed"
NOTHING = "none"  # the decision matched no text (a cancel, an error, a budget)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # id | real | int | text
    null: bool = False
    default: str | None = None  # an SQL literal, for columns added by a migration


TABLES: dict[str, tuple[Column, ...]] = {
    "decisions": (
        Column("id", "id"), Column("ts", "real"), Column("request_id", "text"), Column("policy", "text"),
        Column("rule_id", "text"), Column("action", "text"), Column("token_index", "int"),
        Column("byte_offset", "int"), Column("matched_digest", "text"), Column("digest_kind", "text"),
        Column("matched_text", "text", null=True), Column("detail", "text"),
        Column("replica", "text", default="''")),
    "requests": (
        Column("id", "id"), Column("ts", "real"), Column("request_id", "text"), Column("session", "text", null=True),
        Column("policy", "text"), Column("prompt_tokens", "int"), Column("completion_tokens", "int"),
        Column("finish_reason", "text"), Column("decisions", "int"), Column("rollbacks", "int"),
        Column("elapsed_ms", "real"), Column("ttft_ms", "real", null=True), Column("gate_us_p50", "real", null=True),
        Column("replica", "text", default="''"), Column("key_id", "text", null=True)),
}
INDEXES = (("decisions_request", "decisions", "request_id"), ("decisions_ts", "decisions", "ts"),
           ("decisions_digest", "decisions", "matched_digest"), ("requests_ts", "requests", "ts"))
TYPES = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "real": "REAL", "int": "INTEGER", "text": "TEXT"},
    "postgres": {"id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "real": "DOUBLE PRECISION",
                 "int": "INTEGER", "text": "TEXT"},
}


def column_sql(c: Column, dialect: str) -> str:
    out = f"{c.name} {TYPES[dialect][c.type]}"
    if c.type != "id" and not c.null:
        out += " NOT NULL"
    if c.default is not None:
        out += f" DEFAULT {c.default}"
    return out


def create_table(table: str, dialect: str) -> str:
    cols = ",\n    ".join(column_sql(c, dialect) for c in TABLES[table])
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n)"


def create_statements(dialect: str) -> list[str]:
    """The schema in `dialect` (sqlite, postgres): both tables and their indexes."""
    return [create_table(t, dialect) for t in TABLES] + [
        f"CREATE INDEX IF NOT EXISTS {name} ON {table}({col})" for name, table, col in INDEXES]


def insert_sql(table: str, placeholder: str = "?") -> str:
    cols = [c.name for c in TABLES[table] if c.type != "id"]
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([placeholder] * len(cols))})"


def replica_id() -> str:
    """What names this replica in the audit and /metrics: $INGATE_REPLICA, else the host name."""
    return os.environ.get("INGATE_REPLICA") or socket.gethostname()


def request_row(replica: str, request_id: str, policy: str, result, session: str | None,
                key_id: str | None) -> tuple:
    """A requests row, in TABLES["requests"] order (without the id)."""
    st = result.stats()
    return (time.time(), request_id, session, policy, result.prompt_tokens, result.completion_tokens,
            result.finish_reason, len(result.decisions), result.rollbacks, round(result.elapsed_s * 1000, 2),
            st["ttft_ms"], st["gate_us_p50"], replica, key_id)


class AuditLog(ABC):
    """Append-only decision log. Each write is durable (committed) before it returns.

    The key is loaded when the log is opened for writing (so a bad key stops a server at start,
    not at its first decision); reading needs none. `path` is what reopens it: a file or a URL."""

    path: object
    key: AuditKey | None
    replica: str

    # ---- what a backend implements -------------------------------------------------------------
    @abstractmethod
    def _insert(self, table: str, rows: list[tuple]) -> None:
        """Write rows (TABLES order, no id) in one durable transaction."""

    @abstractmethod
    def _rows(self, sql: str, args: tuple) -> list[dict]:
        """Rows of a query written with `?` placeholders."""

    @abstractmethod
    def close(self) -> None: ...

    def scrub_unkeyed(self) -> int:
        """Blank plain SHA-256 digests that versions before the keyed audit wrote; returns how many."""
        return 0

    # ---- the protocol ----------------------------------------------------------------------------
    def digest(self, data: bytes) -> tuple[str, str]:
        """(digest, kind) of matched text under this deployment's key."""
        if not data:
            return "", NOTHING
        if self.key is None:
            raise AuditError("this audit log was opened for reading; it has no key to digest with")
        return self.key.digest(data), self.key.kind

    def record(self, request_id: str, policy: str, decisions: list[Decision], store_text: bool = False) -> None:
        if not decisions:
            return
        now = time.time()
        rows = []
        for d in decisions:
            digest, kind = self.digest(d.matched)
            rows.append((now, request_id, policy, d.rule_id, d.action, d.token_index, d.byte_offset, digest, kind,
                         d.matched.decode("utf-8", errors="replace") if store_text else None, d.detail, self.replica))
        self._insert("decisions", rows)

    def record_request(self, request_id: str, policy: str, result, session: str | None = None,
                       key_id: str | None = None) -> None:
        """One row per generation, committed before the response's last byte is sent. `session` is
        the client's session id, `key_id` the id of its API key (ingate.keys; never the key)."""
        self._insert("requests", [request_row(self.replica, request_id, policy, result, session, key_id)])

    def find(self, text: str) -> list[dict]:
        """Decisions whose matched text was `text`, by its keyed digest: how an operator asks
        "was this value ever withheld?" without the audit keeping the value."""
        if not text:
            return []  # an empty digest marks decisions that matched nothing, not a value
        digest, _ = self.digest(text.encode("utf-8"))
        return self._rows("SELECT * FROM decisions WHERE matched_digest = ? ORDER BY id", (digest,))

    def export(self, since: float = 0.0) -> list[dict]:
        """Requests and decisions since a Unix time, oldest first, each tagged with its kind."""
        out: list[dict] = []
        for kind in ("request", "decision"):
            out += [{"kind": kind, **r} for r in self._rows(f"SELECT * FROM {kind}s WHERE ts >= ? ORDER BY id",
                                                            (since,))]
        return sorted(out, key=lambda r: (r["ts"], r["kind"] != "decision"))

    def tail(self, n: int = 20) -> list[dict]:
        return self.recent("decision", n)

    def recent(self, kind: str, n: int) -> list[dict]:
        """The last `n` rows of `kind` ("decision" or "request"), oldest first."""
        return self._rows(f"SELECT * FROM {_table(kind)} ORDER BY id DESC LIMIT ?", (n,))[::-1]

    def after(self, kind: str, after_id: int, limit: int = 500) -> list[dict]:
        """Rows of `kind` with an id above `after_id`, oldest first, at most `limit`: how a live view
        (the console) follows the audit. On PostgreSQL two replicas' transactions may commit out of
        id order, so a row can surface below an id already seen: a follower can miss it."""
        return self._rows(f"SELECT * FROM {_table(kind)} WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))


def _table(kind: str) -> str:
    if kind not in ("decision", "request"):
        raise ValueError(f"an audit row is a 'decision' or a 'request', not {kind!r}")
    return kind + "s"


def describe(row: dict) -> str:
    """One decision row as `ingate audit tail` and `find` print it."""
    import datetime as _dt

    ts = _dt.datetime.fromtimestamp(row["ts"]).isoformat(timespec="seconds")
    text = f" text={row['matched_text']!r}" if row["matched_text"] is not None else ""
    digest = f" {row['digest_kind']}={row['matched_digest'][:12]}" if row["matched_digest"] else ""
    return (f"{ts} {row['request_id'][:12]} {row['policy']}/{row['rule_id']} {row['action']} "
            f"tok={row['token_index']} off={row['byte_offset']}{digest}{text} - {row['detail']}")
