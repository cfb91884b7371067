"""The audit's key: matched text is kept as an HMAC-SHA256 digest under the deployment's secret.

With a key, identical values still correlate inside one deployment, and a dictionary attack needs
the key. Each row names its digest's kind (`hmac-sha256:<key id>`).

Where the key is looked for: `--audit-key-file FILE`, else `$INGATE_AUDIT_KEY` (the secret
itself), else `$INGATE_AUDIT_KEY_FILE`, else `<audit file>.key` beside a SQLite database,
generated at first start (32 random bytes, hex, mode 0600). A key file that others can read is
refused. A PostgreSQL audit has no file beside it: every replica must be given the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

MIN_KEY_BYTES = 16


class AuditError(RuntimeError):
    """The audit (or its key) cannot be opened or written; the message says what to fix."""


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


def load_key(audit_path: Path | None, key_file: str | Path | None = None) -> AuditKey:
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
    if audit_path is None:
        raise AuditError("no audit key: pass --audit-key-file FILE or set $INGATE_AUDIT_KEY (32+ random bytes)")
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
