"""Sessions in Redis: one governance state for every replica that shares the Redis.

Each session is a hash (`v` violations, `e` entropy spent, `r:<rule id>` violations by rule) and
a sorted set of the requests in flight (scored by when their reservation expires), under
`<prefix>:s:<sha256 of the id>`: the session id a client sends is not written to Redis. `begin`
and `end` are Lua scripts, so each is one atomic step however many replicas call it
(store.sessions.base says what they decide). `end` counts a request once: a retry after a lost reply
finds its marker and adds nothing. Keys expire `ttl` seconds after the session's last request,
by Redis's own TTL.

Every Redis failure (refused, timed out, a script error) is a `StoreError`. redis-py reconnects
on the next call; the server retries an `end` with backoff (ingate.worker), so a Redis that comes
back loses no violation it kept. The client is synchronous: the server calls it off its event
loop (asyncio.to_thread), and the worker threads call it directly.
"""

from __future__ import annotations

import hashlib
import time

from ingate.extras import require
from ingate.gate.decision import Decision
from ingate.store.sessions.base import RESERVATION_S, SessionState, StoreError, Ticket, admit, by_rule, violations_in

# KEYS: hash, in-flight zset. ARGV: now, request id, reservation expiry, escalate_after (-1: none), ttl
BEGIN = """
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
local e = redis.call('HGET', KEYS[1], 'e') or '0'
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[2])
local esc = tonumber(ARGV[4])
if esc < 0 or v + n < esc then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
end
return {v, n, e}
"""
# KEYS: hash, in-flight zset, the request's ended marker. ARGV: request id, violations, entropy, ttl,
# then (rule id, violations) pairs
END = """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], 'v', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[1], 'e', ARGV[3])
  for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], 'r:' .. ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {redis.call('HGET', KEYS[1], 'v') or '0', redis.call('HGET', KEYS[1], 'e') or '0', redis.call('ZCARD', KEYS[2])}
"""


def redis_client(url: str, what: str, timeout_s: float):
    """A Redis client for `url` (the sessions, the keys' limits and the vaults each open one), or
    StoreError naming the store and the URL's form."""
    redis = require("redis")
    try:
        return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    health_check_interval=15)
    except ValueError as e:
        raise StoreError(f"{what} URL {url!r}: {e}; write redis://HOST:PORT/DB") from None


class RedisSessionStore:
    def __init__(self, url: str, prefix: str = "ingate", ttl: float = 3600.0, reservation_s: float = RESERVATION_S,
                 timeout_s: float = 1.0):
        redis = require("redis")

        self.url, self.prefix, self.ttl, self.reservation_s = url, prefix, int(max(1, ttl)), reservation_s
        self.r = redis_client(url, "session store", timeout_s)
        self._begin = self.r.register_script(BEGIN)
        self._end = self.r.register_script(END)
        self._errors = redis.RedisError

    def _keys(self, session: str) -> list[str]:
        h = hashlib.sha256(session.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        base = f"{self.prefix}:s:{{{h}}}"  # one hash slot per session (Redis Cluster)
        return [base, base + ":inflight"]

    def get(self, session: str) -> SessionState | None:
        h, z = self._keys(session)
        try:
            with self.r.pipeline() as p:
                p.hgetall(h)
                p.zcount(z, time.time(), "+inf")
                fields, n = p.execute()
        except self._errors as err:
            raise StoreError(f"session store {self._where()}: {type(err).__name__}: {err}") from None
        if not fields and not n:
            return None
        f = {k.decode(): v.decode() for k, v in fields.items()}
        rules = {k[2:]: int(v) for k, v in f.items() if k.startswith("r:")}
        return SessionState(int(f.get("v", 0)), 0.0, float(f.get("e", 0.0)), int(n), rules)

    def begin(self, session: str, request_id: str, escalate_after: int | None) -> Ticket:
        now = time.time()
        try:
            v, n, e = self._begin(keys=self._keys(session), args=[
                now, request_id, now + self.reservation_s, -1 if escalate_after is None else escalate_after, self.ttl])
        except self._errors as err:
            raise StoreError(f"session store {self._where()}: {type(err).__name__}: {err}") from None
        state = SessionState(int(v), now, float(e), int(n))
        return Ticket(admit(state, escalate_after), state)

    def end(self, session: str, request_id: str, decisions: list[Decision], entropy: float = 0.0) -> SessionState:
        h, z = self._keys(session)
        try:
            pairs = [x for rule, k in by_rule(decisions).items() for x in (rule, k)]
            v, e, n = self._end(keys=[h, z, f"{h}:ended:{request_id}"],
                                args=[request_id, violations_in(decisions), repr(float(entropy)), self.ttl, *pairs])
        except self._errors as err:
            raise StoreError(f"session store {self._where()}: {type(err).__name__}: {err}") from None
        return SessionState(int(v), time.time(), float(e), int(n))

    def health(self) -> dict:
        try:
            self.r.ping()
        except self._errors as err:
            return {"kind": "redis", "ok": False, "url": self._where(), "error": f"{type(err).__name__}: {err}"}
        return {"kind": "redis", "ok": True, "url": self._where(), "prefix": self.prefix}

    def _where(self) -> str:
        """The URL without its password."""
        kw = self.r.connection_pool.connection_kwargs
        return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
