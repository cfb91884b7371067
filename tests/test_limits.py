"""Per-key limits: requests per minute, tokens per minute, tokens per day.

The stores (this process's memory, and the real Redis on 127.0.0.1:6379) are checked for exact
counts under concurrent calls; the memory store's windows against a clock the test moves; the app
for OpenAI's 429 (Retry-After, the error's shape) and /metrics per key id; and two real replicas
sharing Redis for one count under a race of concurrent requests.
"""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ROOT
from ingate.keys import Keys, KeysError
from ingate.store.limits import DAY_S, Limits, MemoryLimitStore
from ingate.store.limits.redis import RedisLimitStore
from test_sessions import REDIS, redis_is_there  # noqa: F401 (the fixture fails loudly without Redis)

SAY_HI = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        yield MemoryLimitStore()
        return
    s = RedisLimitStore(REDIS, f"ingate-test-{uuid.uuid4().hex[:8]}")
    yield s
    for k in s.r.scan_iter(f"{s.prefix}:*"):
        s.r.delete(k)


def _race(n: int, fn) -> list:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(fn, range(n)))


def test_requests_per_minute_admit_exactly_the_limit_under_a_race(store):
    lim = Limits(requests_per_minute=7)
    verdicts = _race(40, lambda i: store.admit("k", f"r{i}", lim))
    assert sum(v.ok for v in verdicts) == 7
    refused = [v for v in verdicts if not v.ok]
    assert {v.limit for v in refused} == {"requests_per_minute"}
    assert all(0 < v.retry_after <= 60 for v in refused)
    assert store.usage("k")["requests_per_minute"] == 7
    store.release("k", next(f"r{i}" for i, v in enumerate(verdicts) if v.ok))  # turned away after all
    assert store.admit("k", "again", lim).ok and not store.admit("k", "more", lim).ok
    assert store.admit("other-key", "r0", lim).ok  # each key its own count


def test_tokens_are_charged_exactly_under_a_race_and_refuse_once_a_window_is_spent(store):
    _race(40, lambda i: store.charge("k", f"r{i}", 3))
    assert store.usage("k") == {"requests_per_minute": 0, "tokens_per_minute": 120, "tokens_per_day": 120}
    v = store.admit("k", "next", Limits(tokens_per_minute=120))
    assert v.limit == "tokens_per_minute" and 0 < v.retry_after <= 60 and v.used["tokens_per_minute"] == 120
    assert store.admit("k", "next", Limits(tokens_per_minute=121)).ok  # under: admitted
    v = store.admit("k", "late", Limits(tokens_per_day=100, tokens_per_minute=1000))
    to_midnight = DAY_S - time.time() % DAY_S
    assert v.limit == "tokens_per_day" and abs(v.retry_after - to_midnight) < 2


def test_a_redis_charge_retried_after_a_lost_reply_counts_once():
    s = RedisLimitStore(REDIS, f"ingate-test-{uuid.uuid4().hex[:8]}")
    for _ in range(3):
        s.charge("k", "the-same-request", 5)
    assert s.usage("k")["tokens_per_day"] == 5
    for k in s.r.scan_iter(f"{s.prefix}:*"):
        s.r.delete(k)


def test_the_windows_slide_as_documented():
    """Against a clock the test moves: requests leave the minute 60 s after they were admitted;
    tokens leave it by the second; the day's tokens reset at 00:00 UTC."""
    base = DAY_S * 20000 + 100  # a whole second, 100 s into a UTC day
    now = [float(base)]
    s = MemoryLimitStore(clock=lambda: now[0])
    lim = Limits(requests_per_minute=3)
    for t in (0, 10, 20):
        now[0] = base + t
        assert s.admit("k", f"r{t}", lim).ok
    now[0] = base + 30
    v = s.admit("k", "r30", lim)
    assert v.limit == "requests_per_minute" and v.retry_after == pytest.approx(30)  # when r0 leaves
    now[0] = base + 60.001
    assert s.admit("k", "r60", lim).ok
    s.charge("k", "a", 6)  # in second base + 60
    now[0] = base + 80.001
    s.charge("k", "b", 6)  # in second base + 80
    v = s.admit("k", "t", Limits(tokens_per_minute=10))
    assert v.limit == "tokens_per_minute" and v.retry_after == pytest.approx(39.999)  # when "a" leaves
    now[0] = base + 120.5  # second base + 60 has left the minute
    assert s.admit("k", "t2", Limits(tokens_per_minute=10)).ok
    assert s.usage("k")["tokens_per_minute"] == 6 and s.usage("k")["tokens_per_day"] == 12
    now[0] = DAY_S * 20001 + 1  # a new UTC day
    assert s.usage("k")["tokens_per_day"] == 0


@pytest.mark.parametrize("body, message", [
    ("{requests_per_minute: 0}", "above 0"),
    ("{tokens_per_day: 1.5}", "whole number"),
    ("{tokens_per_hour: 5}", "unknown limit 'tokens_per_hour'"),
    ("[60]", "a mapping of"),
])
def test_a_bad_limit_names_the_key_and_the_fix(tmp_path, body, message):
    f = tmp_path / "keys.yaml"
    f.write_text(f"keys:\n  - {{id: a, key: x, limits: {body}}}\n")
    with pytest.raises(KeysError, match=message):
        Keys.from_specs([], f)


def _docs_keys_file() -> str:
    """The keys file docs/server.md shows under "Per-key limits", as written there."""
    text = (ROOT / "docs" / "server.md").read_text().split("## Per-key limits", 1)[1]
    m = re.search(r"cat > keys.yaml <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert m, "docs/server.md: the Per-key limits section lost its keys.yaml example"
    return m.group(1) + "\n"


def _app(runtime, keys: Keys):
    from ingate.policy import load_policy
    from ingate.server import ServerConfig, create_app
    from test_leaks import _Borrowed

    return create_app(_Borrowed(runtime), ServerConfig(policies={"default": load_policy(None)}, api_keys=keys))


def test_the_documented_keys_file_limits_a_key_with_openais_429_and_metrics_count_it_by_id(runtime, tmp_path,
                                                                                           monkeypatch):
    from fastapi.testclient import TestClient

    (tmp_path / "keys.yaml").write_text(_docs_keys_file())
    monkeypatch.chdir(tmp_path)
    keys = Keys.from_specs([], "keys.yaml")
    web_key, batch_key = "sk-acme-web-1", "sk-acme-batch-2"
    assert keys.lookup(web_key).limits.requests_per_minute == 2 and keys.lookup(batch_key).limits.tokens_per_day
    with TestClient(_app(runtime, keys)) as c:
        def post(key, **extra):
            return c.post("/v1/chat/completions", json=SAY_HI | extra, headers={"Authorization": f"Bearer {key}"})

        ok = [post(web_key), post(web_key, stream=True)]
        assert [r.status_code for r in ok] == [200, 200]
        r = post(web_key)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert (err["type"], err["code"], err["param"]) == ("requests", "rate_limit_exceeded", None)
        assert "acme-web" in err["message"] and "requests per minute" in err["message"]
        assert post(batch_key).status_code == 200  # another key, its own count
        usage = ok[0].json()["usage"]
        metrics = c.get("/metrics").text
    assert 'ingate_key_requests_total{key_id="acme-web"} 2.0' in metrics
    assert 'ingate_key_rate_limited_total{key_id="acme-web",limit="requests_per_minute"} 1.0' in metrics
    assert 'ingate_key_limit_used{key_id="acme-web",limit="requests_per_minute"} 2.0' in metrics
    assert f'ingate_key_tokens_total{{key_id="acme-web",kind="prompt"}} {2 * usage["prompt_tokens"]}.0' in metrics
    assert "sk-acme" not in metrics  # ids, never keys


def test_a_token_budget_is_charged_what_usage_says_and_then_refuses_until_its_window_clears(runtime):
    from fastapi.testclient import TestClient

    from ingate.keys import Grant, digest

    f = {"minute": Limits(tokens_per_minute=1), "day": Limits(tokens_per_day=1)}
    keys = Keys()
    for name, lim in f.items():
        keys.add(digest(f"key-{name}"), Grant(key_id=name, tenant=name, limits=lim), "test")
    with TestClient(_app(runtime, keys)) as c:
        for name in f:
            h = {"Authorization": f"Bearer key-{name}"}
            first = c.post("/v1/chat/completions", json=SAY_HI, headers=h)
            assert first.status_code == 200  # nothing charged yet: admitted
            total = first.json()["usage"]["total_tokens"]
            second = c.post("/v1/chat/completions", json=SAY_HI, headers=h)
            assert second.status_code == 429 and second.json()["error"]["type"] == "tokens"
            wait = int(second.headers["retry-after"])
            assert wait <= 60 if name == "minute" else abs(wait - (DAY_S - time.time() % DAY_S)) < 3
            metrics = c.get("/metrics").text
            limit = "tokens_per_minute" if name == "minute" else "tokens_per_day"
            assert f'ingate_key_limit_used{{key_id="{name}",limit="{limit}"}} {total}.0' in metrics


@pytest.mark.slow
def test_two_replicas_sharing_redis_admit_exactly_the_limit_and_log_json_lines_with_no_key_or_prompt(tmp_path,
                                                                                                     monkeypatch):
    """Two real replicas, their keys and log format given only as $INGATE_* variables: 12 concurrent
    requests of a key allowed 4 a minute get exactly 4 answers, over both; each replica's /metrics
    shows the shared window. Every log line is JSON, with an access line per request, and neither a
    key nor the prompt (which holds a phone number) is in any of them."""
    import json
    import signal

    from conftest import PHONE, PII_PROMPT
    from test_logs import REDACT
    from test_sessions import two_replicas

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {id: racer, key: sk-racer-1, limits: {requests_per_minute: 4}}\n"
                    "  - {id: reader, key: sk-reader-2}\n")
    monkeypatch.setenv("INGATE_KEYS", str(keys))
    monkeypatch.setenv("INGATE_LOG_FORMAT", "json")
    with two_replicas(tmp_path, REDACT) as (a, b, _):
        def one(i: int) -> int:
            srv = (a, b)[i % 2]
            return httpx.post(srv.url + "/v1/chat/completions", json=SAY_HI, timeout=120,
                              headers={"Authorization": "Bearer sk-racer-1"}).status_code

        codes = _race(12, one)
        assert sorted(codes) == [200] * 4 + [429] * 8, codes
        for srv in (a, b):
            m = httpx.get(srv.url + "/metrics").text
            assert 'ingate_key_limit_used{key_id="racer",limit="requests_per_minute"} 4.0' in m
        r = httpx.post(a.url + "/v1/chat/completions", timeout=120, headers={"Authorization": "Bearer sk-reader-2"},
                       json=SAY_HI | {"messages": [{"role": "user", "content": PII_PROMPT}], "max_tokens": 16})
        assert r.status_code == 200
    assert a.proc.returncode == b.proc.returncode == -signal.SIGTERM  # drained, then ended as the signal asks
    text = a.log.read_text() + b.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [x for x in lines if x["logger"] == "ingate.access" and x["path"] == "/v1/chat/completions"]
    assert sorted(x["status"] for x in access) == [200] * 5 + [429] * 8
    assert {x.get("error") for x in access if x["status"] == 429} == {"rate_limit_exceeded"}
    assert {x["key_id"] for x in access} == {"racer", "reader"}
    assert "sk-racer" not in text and "sk-reader" not in text and PHONE not in text and "john.smith" not in text
