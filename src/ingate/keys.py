"""API keys: who a request comes from, what it may use and see, and whose sessions it touches.

A key is given on the command line (`--api-key KEY[:POLICY+POLICY[:DETAIL]]`, or
$INGATE_API_KEYS, comma-separated) or in a keys file (`--keys FILE`, YAML) that can also name it
and map it to a tenant:

    keys:
      - id: acme-web            # names the key in the audit, the logs and /metrics (never the key)
        key_env: ACME_WEB_KEY   # the secret: key (inline), key_env (an environment variable) or
                                # key_sha256 (its SHA-256, hex: the file then holds no secret)
        tenant: acme            # sessions are the tenant's: default, the key's own id
        policies: [default]     # default: every loaded policy
        detail: minimal         # governance detail this key sees: minimal or full
        admin: false            # true: this key also opens the console (`serve --console`)
        limits:                 # optional, each optional (ingate.store.limits): over one, a 429
          requests_per_minute: 60
          tokens_per_minute: 20000
          tokens_per_day: 1000000

A key that only opens the console, and is no API key, is given with `--admin-key KEY` (or
$INGATE_ADMIN_KEYS, comma-separated). The console is guarded by the admin keys whenever any key is
configured (ingate.console.auth).

A session id is a name the client chooses, so sessions are scoped by tenant: two tenants that both
say `X-Session-Id: alice` have two sessions, and no request can read, escalate or spend another
tenant's session. Keys of one tenant share its sessions. Without keys (auth off) there is one tenant.

The server keeps only each key's SHA-256: the bearer key of a request is hashed and looked up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ingate.report import LEVELS
from ingate.store.limits.base import LIMITS, Limits

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class KeysError(ValueError):
    """A key spec or keys file that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Grant:
    """What one API key may do: use these policies (None: all), see this governance detail (None:
    the server's), as `key_id`, within `tenant`'s sessions. `Grant()` is the open server's."""

    policies: frozenset[str] | None = None
    detail: str | None = None
    key_id: str | None = None
    tenant: str = ""
    admin: bool = False  # this key opens the console too
    limits: Limits | None = None  # requests and tokens it may use (ingate.store.limits); None: no limit

    def session_key(self, session: str) -> str:
        """The store's name for the client's session `session`: scoped by tenant. Tenant ids are
        `ID`s (no NUL), so no session name of one tenant can spell another tenant's key."""
        return f"{self.tenant}\0{session}" if self.tenant else session


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def derived_id(key: str) -> str:
    """A key's default id: a short fingerprint. Use random keys: a guessable key is found from
    its fingerprint as from its hash (name it with `id:` in a keys file to publish nothing of it)."""
    return "key-" + hashlib.sha256(b"ingate key id\0" + key.encode("utf-8")).hexdigest()[:10]


class Keys:
    """The configured keys, by the SHA-256 of the secret. Empty: auth is off."""

    def __init__(self, grants: dict[str, Grant] | None = None):
        self.by_digest: dict[str, Grant] = dict(grants or {})
        # the keys that open the console, by digest: keys-file entries marked admin, and --admin-key
        # keys (which are no API keys: they are not in by_digest, so they turn no API auth on)
        self.admins: dict[str, Grant] = {k: g for k, g in self.by_digest.items() if g.admin}

    def __bool__(self) -> bool:
        return bool(self.by_digest)

    def __len__(self) -> int:
        return len(self.by_digest)

    def grants(self) -> Iterable[Grant]:
        return self.by_digest.values()

    def lookup(self, key: str) -> Grant | None:
        """The grant of a bearer key, or None (compared in constant time per configured key)."""
        return _find(self.by_digest, key)

    def lookup_admin(self, key: str) -> Grant | None:
        """The grant of an admin key (the console's), or None."""
        return _find(self.admins, key)

    def admin_by_id(self, key_id: str) -> Grant | None:
        return next((g for g in self.admins.values() if g.key_id == key_id), None)

    def add(self, key_digest: str, grant: Grant, where: str) -> None:
        if key_digest in self.by_digest:
            raise KeysError(f"{where}: the same key is configured twice (ids {self.by_digest[key_digest].key_id} "
                            f"and {grant.key_id}); give each its own")
        if grant.key_id in {g.key_id for g in self.by_digest.values()}:
            raise KeysError(f"{where}: two keys have the id {grant.key_id!r}; ids name keys in the audit, so "
                            "each must be unique")
        self.by_digest[key_digest] = grant
        if grant.admin:
            self.admins[key_digest] = grant

    def add_admin(self, key: str) -> None:
        """A key that opens the console and nothing else (`--admin-key`)."""
        key = key.strip()
        if not key:
            raise KeysError("an empty admin key; give --admin-key a random secret (`python -c 'import secrets; "
                            "print(secrets.token_hex(16))'`)")
        kid = "admin-" + derived_id(key)[4:]
        if digest(key) in self.admins:
            raise KeysError(f"the admin key {kid} is given twice (or is also a keys-file entry marked admin)")
        self.admins[digest(key)] = Grant(key_id=kid, tenant=kid, admin=True)

    @classmethod
    def from_specs(cls, specs: Iterable[str], keys_file: str | Path | None = None,
                   admin_keys: Iterable[str] = ()) -> Keys:
        out = cls()
        for spec in specs:
            key, grant = parse_spec(spec)
            out.add(digest(key), grant, f"API key {key[:4]}...")
        if keys_file is not None:
            for key_digest, grant in load_file(keys_file):
                out.add(key_digest, grant, str(keys_file))
        for key in admin_keys:
            out.add_admin(key)
        return out

    def check_policies(self, loaded: Iterable[str]) -> None:
        names = set(loaded)
        for g in self.grants():
            unknown = sorted((g.policies or set()) - names)
            if unknown:
                raise KeysError(f"API key {g.key_id}: unknown policy {unknown[0]!r}; loaded: "
                                f"{', '.join(sorted(names))}")


def _find(table: dict[str, Grant], key: str) -> Grant | None:
    """The grant of `key` in `table` (by digest), compared in constant time per configured key."""
    d = digest(key)
    found = None
    for k, g in table.items():
        if hmac.compare_digest(k, d):
            found = g
    return found


def parse_spec(spec: str) -> tuple[str, Grant]:
    """KEY, KEY:POLICY+POLICY, KEY:POLICY+POLICY:DETAIL or KEY::DETAIL (every policy)."""
    key, _, rest = spec.strip().partition(":")
    pols, _, detail = rest.partition(":")
    if not key:
        raise KeysError(f"API key spec {spec!r} has no key; write KEY, KEY:POLICY+POLICY or KEY:POLICY+POLICY:full")
    if detail and detail not in LEVELS:
        raise KeysError(f"API key {key[:4]}...: governance detail {detail!r} is not one of {', '.join(LEVELS)}")
    kid = derived_id(key)
    return key, Grant(frozenset(p for p in pols.split("+") if p) or None, detail or None, kid, kid)


FIELDS = {"id", "key", "key_env", "key_sha256", "tenant", "policies", "detail", "admin", "limits"}


def load_file(path: str | Path) -> list[tuple[str, Grant]]:
    """(key digest, grant) for each entry of a keys file; KeysError naming the entry and field."""
    import yaml

    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise KeysError(f"keys file {str(p)!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise KeysError(f"keys file {str(p)!r} is not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysError(f"keys file {str(p)!r}: expected a mapping with a 'keys' list")
    out = []
    for i, entry in enumerate(doc["keys"]):
        out.append(_entry(p, i, entry))
    return out


def _entry(p: Path, i: int, e: object) -> tuple[str, Grant]:
    """One entry of a keys file."""
    where = f"{p}: keys[{i}]"
    if not isinstance(e, dict):
        raise KeysError(f"{where}: expected a mapping (id, key_env, tenant, policies, detail, admin)")
    extra = sorted(set(e) - FIELDS)
    if extra:
        raise KeysError(f"{where}: unknown field {extra[0]!r}; known: {', '.join(sorted(FIELDS))}")
    kid = e.get("id")
    if not isinstance(kid, str) or not ID.fullmatch(kid):
        raise KeysError(f"{where}.id: give each key an id of letters, digits, '.', '_' or '-' (it names the "
                        "key in the audit and /metrics)")
    where = f"{p}: key {kid!r}"
    secrets_given = [f for f in ("key", "key_env", "key_sha256") if e.get(f) is not None]
    if len(secrets_given) != 1:
        raise KeysError(f"{where}: give exactly one of key, key_env, key_sha256 (got "
                        f"{', '.join(secrets_given) or 'none'})")
    if "key" in secrets_given:
        key_digest = digest(_str(e["key"], where, "key"))
    elif "key_env" in secrets_given:
        env = _str(e["key_env"], where, "key_env")
        if not os.environ.get(env):
            raise KeysError(f"{where}.key_env: the environment variable {env} is not set")
        key_digest = digest(os.environ[env])
    else:
        key_digest = _str(e["key_sha256"], where, "key_sha256").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", key_digest):
            raise KeysError(f"{where}.key_sha256: 64 hex digits (`printf %s KEY | sha256sum`)")
    tenant = e.get("tenant", kid)
    if not isinstance(tenant, str) or not ID.fullmatch(tenant):
        raise KeysError(f"{where}.tenant: letters, digits, '.', '_' or '-'")
    pols = e.get("policies")
    if pols is not None and (not isinstance(pols, list) or not all(isinstance(x, str) for x in pols)):
        raise KeysError(f"{where}.policies: a list of policy names")
    detail = e.get("detail")
    if detail is not None and detail not in LEVELS:
        raise KeysError(f"{where}.detail: {detail!r} is not one of {', '.join(LEVELS)}")
    admin = e.get("admin", False)
    if not isinstance(admin, bool):
        raise KeysError(f"{where}.admin: true or false (true: the key opens the console too)")
    return key_digest, Grant(frozenset(pols) if pols else None, detail, kid, tenant, admin,
                             _limits(e.get("limits"), where))


def _limits(v: object, where: str) -> Limits | None:
    """An entry's `limits`: a mapping of requests_per_minute, tokens_per_minute, tokens_per_day."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise KeysError(f"{where}.limits: a mapping of {', '.join(LIMITS)}")
    extra = sorted(set(v) - set(LIMITS))
    if extra:
        raise KeysError(f"{where}.limits: unknown limit {extra[0]!r}; known: {', '.join(LIMITS)}")
    for k, n in v.items():
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise KeysError(f"{where}.limits.{k}: a whole number above 0 (leave it out for no limit)")
    return Limits(**v) or None


def _str(v: object, where: str, field: str) -> str:
    if not isinstance(v, str) or not v:
        raise KeysError(f"{where}.{field}: a non-empty string")
    return v
