"""Per-key limits in Redis: one count for every replica that shares the Redis.

Under `<prefix>:l:{<key id>}` (one hash slot per key: Redis Cluster): `:r`, a sorted set of the
requests admitted in the last minute (scored by when); `:m`, a hash of tokens charged by second;
`:d:<day>`, the tokens charged on that UTC day; `:c:<request id>`, the marker that a request was
charged (a retried charge adds nothing). `admit` and `charge` are Lua scripts: each is one atomic
step however many replicas call it, and both read Redis's clock (TIME), so replicas whose clocks
disagree still share one window. store.limits.base says what the windows are.
"""

from __future__ import annotations

from ingate.extras import require
from ingate.store.limits.base import LIMITS, Limits, Verdict, refusal
from ingate.store.sessions.base import StoreError
from ingate.store.sessions.redis import redis_client

# KEYS: requests zset, tokens-by-second hash, day key prefix. ARGV: request id, rpm, tpm, tpd (-1:
# none), admit (1) or only read (0). Returns the three counts and the three waits, as strings.
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec + tonumber(t[2]) / 1000000
local rpm, tpm, tpd = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
local n = redis.call('ZCARD', KEYS[1])
local r_rpm, r_tpm = 0, 0
if rpm >= 0 and n >= rpm then
  local e = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
  r_rpm = tonumber(e[2]) + 60 - now
end
local h = redis.call('HGETALL', KEYS[2])
local secs, by, used = {}, {}, 0
for i = 1, #h, 2 do
  local s = tonumber(h[i])
  if s <= sec - 60 then redis.call('HDEL', KEYS[2], h[i])
  else table.insert(secs, s); by[s] = tonumber(h[i + 1]); used = used + by[s] end
end
if tpm >= 0 and used >= tpm then
  table.sort(secs)
  local left = used
  for _, s in ipairs(secs) do
    left = left - by[s]
    if left < tpm then r_tpm = s + 60 - now; break end
  end
end
local day = math.floor(sec / 86400)
local d = tonumber(redis.call('GET', KEYS[3] .. day) or '0')
local r_tpd = (day + 1) * 86400 - now
local over = (rpm >= 0 and n >= rpm) or (tpm >= 0 and used >= tpm) or (tpd >= 0 and d >= tpd)
if ARGV[5] == '1' and not over then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('EXPIRE', KEYS[1], 61)
end
return {tostring(n), tostring(used), tostring(d), tostring(r_rpm), tostring(r_tpm), tostring(r_tpd)}
"""
# KEYS: tokens-by-second hash, day key prefix, the request's charged marker. ARGV: tokens
CHARGE = """
if redis.call('SET', KEYS[3], '1', 'NX', 'EX', 120) then
  local t = redis.call('TIME')
  redis.call('HINCRBY', KEYS[1], t[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], 61)
  local dk = KEYS[2] .. math.floor(tonumber(t[1]) / 86400)
  redis.call('INCRBY', dk, ARGV[1])
  redis.call('EXPIRE', dk, 90000)
end
return 1
"""


class RedisLimitStore:
    def __init__(self, url: str, prefix: str = "ingate", timeout_s: float = 1.0):
        redis = require("redis")

        self.prefix = prefix
        self.r = redis_client(url, "limits store", timeout_s)
        self._admit = self.r.register_script(ADMIT)
        self._charge = self.r.register_script(CHARGE)
        self._errors = redis.RedisError

    def _base(self, key_id: str) -> str:
        return f"{self.prefix}:l:{{{key_id}}}"

    def _run(self, key_id: str, request_id: str, limits: Limits, admit: bool) -> tuple[dict, dict]:
        b = self._base(key_id)
        lim = [-1 if v is None else v for v in limits.as_dict().values()]
        try:
            out = self._admit(keys=[b + ":r", b + ":m", b + ":d:"], args=[request_id, *lim, 1 if admit else 0])
        except self._errors as err:
            raise StoreError(f"limits store: {type(err).__name__}: {err}") from None
        vals = [float(x) for x in out]
        return dict(zip(LIMITS, (int(v) for v in vals[:3]), strict=True)), dict(zip(LIMITS, vals[3:], strict=True))

    def admit(self, key_id: str, request_id: str, limits: Limits) -> Verdict:
        used, retries = self._run(key_id, request_id, limits, True)
        return refusal(limits, used, retries)

    def release(self, key_id: str, request_id: str) -> None:
        try:
            self.r.zrem(self._base(key_id) + ":r", request_id)
        except self._errors as err:
            raise StoreError(f"limits store: {type(err).__name__}: {err}") from None

    def charge(self, key_id: str, request_id: str, tokens: int) -> None:
        if tokens <= 0:
            return
        b = self._base(key_id)
        try:
            self._charge(keys=[b + ":m", b + ":d:", f"{b}:c:{request_id}"], args=[int(tokens)])
        except self._errors as err:
            raise StoreError(f"limits store: {type(err).__name__}: {err}") from None

    def usage(self, key_id: str) -> dict[str, int]:
        return self._run(key_id, "", Limits(), False)[0]

