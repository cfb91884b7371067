"""The audit trail: every decision, durable in SQLite (WAL) before its text is released.

Matched text is kept as an HMAC-SHA256 digest under the deployment's secret key unless the policy
sets `audit: {store_text: true}`. A plain SHA-256 of a short value is no protection: the 10^7
phone numbers of one area code hash in seconds. With a key, identical values still correlate
inside one deployment, and a dictionary attack needs the key. Each row names its digest's kind
(`hmac-sha256:<key id>`), so rows written by earlier versions, whose digests were plain SHA-256,
are marked `sha256-unkeyed` by the migration, never passed off as keyed; `ingate audit scrub`
blanks them.

The key: `--audit-key-file FILE`, else `$INGATE_AUDIT_KEY` (the secret itself), else
`$INGATE_AUDIT_KEY_FILE`, else `<audit file>.key` beside the database, generated at first start
(32 random bytes, hex, mode 0600). A key file that others can read is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ingate.gate.decision import Decision

SCHEMA_VERSION = 3  # 2: every row names the replica that wrote it (rows of version 1 have '');
# 3: a request row names the caller's API key id (ingate.keys), never the key (NULL: auth off or older)
DECISIONS = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    policy TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    action TEXT NOT NULL,
    token_index INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    matched_digest TEXT NOT NULL,
    digest_kind TEXT NOT NULL,
    matched_text TEXT,
    detail TEXT NOT NULL
);
"""
SCHEMA = DECISIONS + """
CREATE INDEX IF NOT EXISTS decisions_request ON decisions(request_id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions(ts);
CREATE INDEX IF NOT EXISTS decisions_digest ON decisions(matched_digest);
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
REQUEST_COLUMNS = ("ts", "request_id", "session", "policy", "prompt_tokens", "completion_tokens", "finish_reason",
                   "decisions", "rollbacks", "elapsed_ms", "ttft_ms", "gate_us_p50", "replica", "key_id")
INSERT_REQUEST = (f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})")
UNKEYED = "sha256-unkeyed"
NOTHING = "none"  # the decision matched no text (a cancel, an error, a budget)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MIN_KEY_BYTES = 16


def request_row(replica: str, request_id: str, policy: str, result, session: str | None,
                key_id: str | None) -> tuple:
    """A requests row, in REQUEST_COLUMNS order."""
    st = result.stats()
    return (time.time(), request_id, session, policy, result.prompt_tokens, result.completion_tokens,
            result.finish_reason, len(result.decisions), result.rollbacks, round(result.elapsed_s * 1000, 2),
            st["ttft_ms"], st["gate_us_p50"], replica, key_id)


def replica_id() -> str:
    """What names this replica in the audit and /metrics: $INGATE_REPLICA, else the host name."""
    return os.environ.get("INGATE_REPLICA") or socket.gethostname()


def default_audit_path() -> Path:
    env = os.environ.get("INGATE_AUDIT")
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ingate" / "audit.sqlite3"


class AuditError(RuntimeError):
    pass


@dataclass(frozen=True)
class AuditKey:
    secret: bytes
    source: str  # where it came from: a path, or $INGATE_AUDIT_KEY

    @property
    def id(self) -> str:
        """A fingerprint that names the key in each row without revealing it."""
        return hashlib.sha256(b"ingate audit key id\0" + self.secret).hexdigest()[:12]

    @property
    def kind(self) -> str:
        return f"hmac-sha256:{self.id}"

    def digest(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()


def load_key(audit_path: Path, key_file: str | Path | None = None) -> AuditKey:
    """The deployment's audit key (see the module docstring for where it is looked for)."""
    if key_file is None and os.environ.get("INGATE_AUDIT_KEY"):
        secret = os.environ["INGATE_AUDIT_KEY"].strip().encode()
        if len(secret) < MIN_KEY_BYTES:
            raise AuditError(f"$INGATE_AUDIT_KEY is {len(secret)} bytes; use at least {MIN_KEY_BYTES} random "
                             "bytes, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
        return AuditKey(secret, "$INGATE_AUDIT_KEY")
    if key_file is None and os.environ.get("INGATE_AUDIT_KEY_FILE"):
        key_file = os.environ["INGATE_AUDIT_KEY_FILE"]
    if key_file is not None:
        return _read_key(Path(key_file), create=False)
    return _read_key(audit_path.with_name(audit_path.name + ".key"), create=True)


def _read_key(path: Path, create: bool) -> AuditKey:
    if create and not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        except FileExistsError:
            pass  # another process (the engine core, a second server) made it first: use theirs
        except OSError as e:
            raise AuditError(f"cannot create the audit key {str(path)!r}: {e.strerror or e}; pass "
                             "--audit-key-file FILE or set $INGATE_AUDIT_KEY") from None
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise AuditError(f"the audit key {str(path)!r} can be read by others (mode "
                             f"{stat.S_IMODE(st.st_mode):o}); run `chmod 600 {path}`")
        secret = path.read_bytes().strip()
    except FileNotFoundError:
        raise AuditError(f"audit key file {str(path)!r} does not exist; create one with "
                         f"`python -c 'import secrets; print(secrets.token_hex(32))' > {path} && "
                         f"chmod 600 {path}`") from None
    except OSError as e:
        raise AuditError(f"cannot read the audit key {str(path)!r}: {e.strerror or e}") from None
    if len(secret) < MIN_KEY_BYTES:
        raise AuditError(f"the audit key {str(path)!r} holds {len(secret)} bytes; use at least {MIN_KEY_BYTES} "
                         "random bytes")
    return AuditKey(secret, str(path))


class AuditLog:
    """Append-only decision log. Each write is committed (fsync'd) before it returns.

    `key_file`: see `load_key`. The key is loaded when the log is opened for writing (so a bad key
    stops a server at start, not at its first decision); reading needs none.
    """

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
        """Create the schema, or bring an older one to this version in one transaction. Rows of
        version 0 kept plain SHA-256 digests: they are marked as such, never relabelled as keyed."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            cols = [r[1] for r in db.execute("PRAGMA table_info(decisions)")]
            if version == 0 and "matched_sha256" in cols:
                db.execute("ALTER TABLE decisions RENAME TO decisions_v0")
                db.execute("DROP INDEX IF EXISTS decisions_request")
                db.execute("DROP INDEX IF EXISTS decisions_ts")
                db.execute(DECISIONS)
                db.execute(
                    "INSERT INTO decisions (id, ts, request_id, policy, rule_id, action, token_index, byte_offset,"
                    " matched_digest, digest_kind, matched_text, detail) SELECT id, ts, request_id, policy, rule_id,"
                    " action, token_index, byte_offset, CASE WHEN matched_sha256 = ? THEN '' ELSE matched_sha256 END,"
                    " CASE WHEN matched_sha256 = ? THEN ? ELSE ? END, matched_text, detail FROM decisions_v0",
                    (EMPTY_SHA256, EMPTY_SHA256, NOTHING, UNKEYED))
                db.execute("DROP TABLE decisions_v0")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    db.execute(stmt)
            for table in ("decisions", "requests"):
                if "replica" not in [r[1] for r in db.execute(f"PRAGMA table_info({table})")]:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN replica TEXT NOT NULL DEFAULT ''")
            if "key_id" not in [r[1] for r in db.execute("PRAGMA table_info(requests)")]:
                db.execute("ALTER TABLE requests ADD COLUMN key_id TEXT")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO decisions (ts, request_id, policy, rule_id, action, token_index, byte_offset,"
                    " matched_digest, digest_kind, matched_text, detail, replica) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def record_request(self, request_id: str, policy: str, result, session: str | None = None,
                       key_id: str | None = None) -> None:
        """One row per generation, committed before the response's last byte is sent. `session` is
        the client's session id, `key_id` the id of its API key (ingate.keys; never the key)."""
        with self._lock:
            self._db.execute(INSERT_REQUEST, request_row(self.replica, request_id, policy, result, session, key_id))

    def find(self, text: str) -> list[dict]:
        """Decisions whose matched text was `text`, by its keyed digest: how an operator asks
        "was this value ever withheld?" without the audit keeping the value."""
        if not text:
            return []  # an empty digest marks decisions that matched nothing, not a value
        digest, _ = self.digest(text.encode("utf-8"))
        return self._rows("SELECT * FROM decisions WHERE matched_digest = ? ORDER BY id", (digest,))

    def scrub_unkeyed(self) -> int:
        """Blank the plain SHA-256 digests that versions before the keyed audit wrote; returns how many."""
        with self._lock:
            cur = self._db.execute("UPDATE decisions SET matched_digest = '', digest_kind = ? WHERE digest_kind = ?",
                                   (UNKEYED + " (scrubbed)", UNKEYED))
            return cur.rowcount

    def export(self, since: float = 0.0) -> list[dict]:
        """Requests and decisions since a Unix time, oldest first, each tagged with its kind."""
        out: list[dict] = []
        for kind in ("request", "decision"):
            out += [{"kind": kind, **r} for r in self._rows(f"SELECT * FROM {kind}s WHERE ts >= ? ORDER BY id",
                                                            (since,))]
        return sorted(out, key=lambda r: (r["ts"], r["kind"] != "decision"))

    def tail(self, n: int = 20) -> list[dict]:
        return self._rows("SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (n,))[::-1]

    def _rows(self, sql: str, args: tuple) -> list[dict]:
        with self._lock:
            cur = self._db.execute(sql, args)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_audit(path: str | Path | None = None, key_file: str | Path | None = None, write: bool = True) -> AuditLog:
    """The audit a path (else $INGATE_AUDIT) names: a PostgreSQL URL (postgresql://..., ingate.audit_pg),
    else a SQLite file (by default ~/.local/state/ingate/audit.sqlite3)."""
    path = path or os.environ.get("INGATE_AUDIT") or None
    if path is not None and str(path).startswith(("postgresql://", "postgres://")):
        from ingate.audit_pg import PgAuditLog

        return PgAuditLog(str(path), str(key_file) if key_file is not None else None, write)
    return AuditLog(path, key_file, write)


def describe(row: dict) -> str:
    """One decision row as `ingate audit tail` and `find` print it."""
    import datetime as _dt

    ts = _dt.datetime.fromtimestamp(row["ts"]).isoformat(timespec="seconds")
    text = f" text={row['matched_text']!r}" if row["matched_text"] is not None else ""
    digest = f" {row['digest_kind']}={row['matched_digest'][:12]}" if row["matched_digest"] else ""
    return (f"{ts} {row['request_id'][:12]} {row['policy']}/{row['rule_id']} {row['action']} "
            f"tok={row['token_index']} off={row['byte_offset']}{digest}{text} - {row['detail']}")
