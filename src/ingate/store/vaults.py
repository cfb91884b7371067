"""Session vaults: a session's placeholders kept between its requests (`mask_upstream: {vault: session}`).

With a session vault, a value keeps its placeholder from one turn to the next (the history a
client sends back is masked as the upstream saw it before, and an upstream's prompt cache still
hits). Two stores, as for sessions (`--sessions`):

  memory   this process's; forgotten `ttl` seconds after the session's last save
  redis    shared by replicas: one key per session, `<prefix>:v:{sha256 of the session}`, expiring
           `ttl` seconds after the last save, holding the vault encrypted at rest: AES-256-GCM
           under a key derived (HKDF-SHA256) from the deployment's vault key, a fresh nonce per
           write, the Redis key as associated data (a vault copied under another session's key
           does not decrypt). Without a vault key a Redis vault store refuses to start.

The vault key: $INGATE_VAULT_KEY (the secret itself, 16+ bytes), else $INGATE_VAULT_KEY_FILE,
else --vault-key-file. A save merges with what is stored (values another replica added stay); a
store that cannot be reached makes the request fall back to a vault of its own: masking never
depends on the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Protocol

from ingate.extras import require
from ingate.masking.vault import Vault
from ingate.store.audit.keys import MIN_KEY_BYTES, AuditError, _read_key
from ingate.store.sessions.base import StoreError
from ingate.store.sessions.redis import redis_client

NONCE = 12


class VaultStore(Protocol):
    def load(self, session: str) -> Vault | None: ...

    def save(self, session: str, vault: Vault) -> None: ...


class MemoryVaults:
    """One process's session vaults (kept as JSON: no request holds another's live object)."""

    def __init__(self, ttl: float = 3600.0):
        self.ttl = ttl
        self._v: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def load(self, session: str) -> Vault | None:
        with self._lock:
            hit = self._v.get(session)
            if hit is None or hit[0] < time.monotonic():
                self._v.pop(session, None)
                return None
            return Vault.from_json(hit[1])

    def save(self, session: str, vault: Vault) -> None:
        with self._lock:
            hit = self._v.get(session)
            merged = Vault.from_json(hit[1]) if hit is not None and hit[0] >= time.monotonic() else Vault()
            merged.merge(vault)
            self._v[session] = (time.monotonic() + self.ttl, merged.to_json())


class Cipher:
    """AES-256-GCM under a key derived from the deployment's vault key."""

    def __init__(self, secret: bytes):
        require("cryptography")  # the replicas extra: only Redis vaults are encrypted here
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if len(secret) < MIN_KEY_BYTES:
            raise AuditError(f"the vault key holds {len(secret)} bytes; use at least {MIN_KEY_BYTES} random bytes")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ingate session vault v1").derive(secret)
        self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:NONCE], blob[NONCE:], aad)


class RedisVaults:
    """Session vaults in Redis, encrypted at rest (see the module docstring)."""

    def __init__(self, url: str, cipher: Cipher, prefix: str = "ingate", ttl: float = 3600.0, timeout_s: float = 1.0):
        redis = require("redis")

        self.cipher, self.prefix, self.ttl = cipher, prefix, int(max(1, ttl))
        self.r = redis_client(url, "vault store", timeout_s)
        self._errors = (redis.RedisError,)
        self._watch = redis.WatchError

    def key(self, session: str) -> str:
        h = hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"{self.prefix}:v:{{{h}}}"

    def load(self, session: str) -> Vault | None:
        k = self.key(session)
        try:
            blob = self.r.get(k)
        except self._errors as err:
            raise StoreError(f"vault store: {type(err).__name__}: {err}") from None
        return None if blob is None else self._open(blob, k)

    def save(self, session: str, vault: Vault) -> None:
        k = self.key(session)
        try:
            for _ in range(5):  # optimistic: another replica's save in between is merged, not lost
                with self.r.pipeline() as p:
                    try:
                        p.watch(k)
                        blob = p.get(k)
                        merged = self._open(blob, k) if blob is not None else Vault()
                        merged.merge(vault)
                        p.multi()
                        p.set(k, self.cipher.seal(json.dumps(merged.to_json()).encode(), k.encode()), ex=self.ttl)
                        p.execute()
                        return
                    except self._watch:
                        continue
            raise StoreError("vault store: the session's vault kept changing under this save; not saved")
        except self._errors as err:
            raise StoreError(f"vault store: {type(err).__name__}: {err}") from None

    def _open(self, blob: bytes | str, k: str) -> Vault:
        from cryptography.exceptions import InvalidTag

        try:
            data = blob.encode("latin-1") if isinstance(blob, str) else blob
            return Vault.from_json(json.loads(self.cipher.open(data, k.encode())))
        except (InvalidTag, ValueError) as e:
            raise StoreError(f"vault store: the vault under {k} does not decrypt with this deployment's vault key "
                             f"({type(e).__name__}); give every replica the same key") from None


def vault_key(key_file: str | Path | None = None) -> bytes | None:
    """The deployment's vault key: $INGATE_VAULT_KEY, $INGATE_VAULT_KEY_FILE or `key_file` (None: none given)."""
    if os.environ.get("INGATE_VAULT_KEY"):
        return os.environ["INGATE_VAULT_KEY"].strip().encode()
    key_file = key_file or os.environ.get("INGATE_VAULT_KEY_FILE")
    return _read_key(Path(key_file), create=False).secret if key_file else None


def open_vaults(url: str | None, prefix: str = "ingate", ttl: float = 3600.0,
                key_file: str | Path | None = None) -> VaultStore:
    """The vault store beside the session store `url` names ('memory'/None, or redis://)."""
    if url is None or url == "memory":
        return MemoryVaults(ttl)
    secret = vault_key(key_file)
    if secret is None:
        raise AuditError("session vaults in Redis are encrypted at rest and need a key: set $INGATE_VAULT_KEY (32+ "
                         "random bytes) or pass --vault-key-file FILE (mode 0600), the same on every replica")
    return RedisVaults(url, Cipher(secret), prefix, ttl)
