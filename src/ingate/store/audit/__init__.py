"""The audit trail: one protocol (`AuditLog`), two backends (SQLite by default, PostgreSQL for a
fleet), chosen by `open_audit`'s path or URL."""

from __future__ import annotations

from pathlib import Path

from ingate.store.audit.base import NOTHING, UNKEYED, AuditLog, describe, replica_id
from ingate.store.audit.keys import AuditError, AuditKey, load_key
from ingate.store.audit.postgres import is_postgres
from ingate.store.audit.sqlite import SCHEMA_VERSION, SqliteAudit, default_audit_path

__all__ = ["NOTHING", "SCHEMA_VERSION", "UNKEYED", "AuditError", "AuditKey", "AuditLog", "SqliteAudit",
           "default_audit_path", "describe", "is_postgres", "load_key", "open_audit", "replica_id"]


def open_audit(path: str | Path | None = None, key_file: str | Path | None = None, write: bool = True) -> AuditLog:
    """The audit a path (else $INGATE_AUDIT) names: a PostgreSQL URL (postgresql://...), else a SQLite
    file (by default ~/.local/state/ingate/audit.sqlite3)."""
    import os

    path = path or os.environ.get("INGATE_AUDIT") or None
    if path is not None and is_postgres(path):
        from ingate.store.audit.postgres import PgAudit

        return PgAudit(str(path), str(key_file) if key_file is not None else None, write)
    return SqliteAudit(path, key_file, write)
