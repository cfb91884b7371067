"""Logging: one configuration, text or JSON lines, and one access line per request that says what the
generation did and nothing of what it said, in the app (Starlette's TestClient). Real replicas
configured through $INGATE_* variables write JSON lines with no key and no prompt in them:
tests/test_limits.py runs them.
"""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from conftest import PHONE, PII_PROMPT, ROOT, api_sampling, policy
from ingate import logs

ACCESS_KEYS = {"ts", "level", "logger", "message", "request_id", "method", "path", "status", "duration_ms",
               "key_id", "model", "policy", "stream", "finish_reason", "prompt_tokens", "completion_tokens",
               "ttft_ms", "decisions", "rollbacks"}
REDACT = "version: 1\nname: pii\nrules:\n  - id: pii\n    forbid: {patterns: [phone, email]}\n    action: redact\n"


@pytest.fixture
def captured():
    """ingate's handler writing JSON lines into a buffer, removed afterwards."""
    buf = io.StringIO()
    handler = logs.configure("debug", "json", buf)
    yield buf
    logging.getLogger().removeHandler(handler)
    for name in logs.OURS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_configuring_twice_keeps_one_handler_and_formats_fields_as_text_or_json():
    text, js = io.StringIO(), io.StringIO()
    logs.configure("info", "text", text)
    handler = logs.configure("info", "json", js)  # replaces the first: no line written twice
    try:
        logging.getLogger("ingate.test").info("hello %s", "there", extra={"fields": {"a": 1, "b": "x y"}})
        assert text.getvalue() == ""
        (rec,) = _lines(js)
        assert (rec["message"], rec["a"], rec["b"], rec["level"], rec["logger"]) == ("hello there", 1, "x y", "info",
                                                                                  "ingate.test")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
        handler.setFormatter(logs.TextFormatter())
        logging.getLogger("ingate.test").info("again", extra={"fields": {"a": 1, "b": "x y"}})
        assert re.search(r"Z INFO ingate\.test: again a=1 b=\"x y\"$", js.getvalue().splitlines()[-1])
        logging.getLogger("httpx").info("a library's chatter")  # other libraries: warnings and above
        assert "chatter" not in js.getvalue()
        with pytest.raises(ValueError, match="one of text, json"):
            logs.configure("info", "xml")
    finally:
        logging.getLogger().removeHandler(handler)


def test_an_access_line_per_request_says_what_the_generation_did(runtime, phone_run, captured):
    from fastapi.testclient import TestClient

    from ingate.keys import Keys, derived_id
    from ingate.server import ServerConfig, create_app
    from test_leaks import _Borrowed

    pol = policy(REDACT)
    runtime.prepare(pol)
    app = create_app(_Borrowed(runtime), ServerConfig(policies={"pii": pol}, api_keys=Keys.from_specs(["sk-log-1"])))
    body = {"model": "m", "messages": [{"role": "user", "content": PII_PROMPT}], **api_sampling(phone_run[0])}
    auth = {"Authorization": "Bearer sk-log-1"}
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=body, headers=auth)
        with c.stream("POST", "/v1/chat/completions", json=body | {"stream": True}, headers=auth) as s:
            raw = "".join(s.iter_text())
        bad = c.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-wrong-" + PHONE})
        c.get("/no/such/" + PHONE)
    assert r.status_code == 200 and bad.status_code == 401
    access = [x for x in _lines(captured) if x["logger"] == "ingate.access"]
    assert len(access) == 4
    whole, streamed, unauth, missing = access
    assert set(whole) == ACCESS_KEYS and set(streamed) == ACCESS_KEYS
    res = r.json()
    assert whole["request_id"][:24] == res["id"].removeprefix("chatcmpl-") == r.headers["x-request-id"][:24]
    assert (whole["status"], whole["path"], whole["key_id"], whole["policy"]) == \
        (200, "/v1/chat/completions", derived_id("sk-log-1"), "pii")
    assert whole["prompt_tokens"] == res["usage"]["prompt_tokens"]
    assert whole["completion_tokens"] == res["usage"]["completion_tokens"]
    assert whole["finish_reason"] == res["choices"][0]["finish_reason"] and whole["ttft_ms"] > 0
    assert whole["decisions"].get("redact", 0) >= 1  # the phone the model wrote was redacted
    assert streamed["stream"] is True and streamed["decisions"] == whole["decisions"]
    assert streamed["request_id"][:24] in raw
    assert (unauth["status"], unauth["error"], unauth["key_id"] if "key_id" in unauth else None) == \
        (401, "invalid_api_key", None)
    assert (missing["status"], missing["path"]) == (404, "-")
    text = captured.getvalue()
    assert PHONE not in text and "sk-log-1" not in text and "sk-wrong" not in text and "John" not in text


def test_the_documented_access_line_has_the_fields_of_a_real_one():
    page = (ROOT / "docs" / "server.md").read_text().split("## Logging", 1)[1]
    shown = json.loads(re.search(r"```json\n(.*?)\n```", page, re.S).group(1))
    assert set(shown) == ACCESS_KEYS
