"""Nothing withheld leaks through any output channel: a property test over random banned phrases,
PII values and concept names, on the real model and the real app.

For every rule kind and action (prevent, redact, stop on phrases and on the PII pack; semantic
resample and stop; entropy abstain; escalation refusal), streaming and not, logprobs on and off, the
whole HTTP response body is checked:
  * outside the released text (the governance report, logprobs' alternatives, errors, usage), no
    6+ character substring of a banned value, case-folded;
  * anywhere, no plain SHA-256 or MD5 of a banned value or of any text the audit says was withheld;
  * in the released text, no banned value whole, and no text the audit says was withheld.
The banned values are made up (nonsense words, random digits), so they can only appear by leaking.

The log lines written meanwhile (ingate's and uvicorn's, at debug level, as JSON lines) are checked
too: no 6+ character piece of a banned value, no SHA-256 or MD5 of it or of what the audit says was
withheld, and never the API key the requests carry.

The app runs in this process through Starlette's TestClient (ASGI, real request and response
bodies) on the session's runtime: starting a server per random policy would cost ~5 s an example.
tests/test_server.py covers the same app on loopback.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import secrets
import sqlite3
import unicodedata

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from conftest import policy
from ingate import logs
from ingate.drivers.base import GenerationParams
from ingate.keys import Keys
from ingate.policy import load_policy
from ingate.runtime import LocalCore
from ingate.sampling import SamplingParams
from ingate.server import ServerConfig, create_app

pytestmark = pytest.mark.slow

SYLLABLES = ["vor", "qui", "zan", "thr", "eb", "ul", "kax", "mip", "dro", "fey", "gul", "osk", "pra", "yth", "wen"]
word = st.lists(st.sampled_from(SYLLABLES), min_size=3, max_size=4).map("".join)
COMBOS = [(False, True), (True, False), (False, False), (True, True)]  # (stream, logprobs)
# per policy: past the four combinations, only until the gate has had something to withhold. The
# model misspells some made-up names most of the time ("Prathrfey" as "Prathfey": 1 run in 6), and
# 16 attempts then miss every time in about 5% of draws: 32 make that 0.3%. Some names it cannot
# write at all on some CPUs ("Praquiebwen Feythrfey": 0 in 32 on an AVX2 EPYC): an example whose
# name the ungoverned model does not write in WRITABLE_TRIES runs is rejected up front (it has
# nothing to withhold), and hypothesis draws another.
MAX_ATTEMPTS = 32
WRITABLE_TRIES = 8


class _Borrowed(LocalCore):
    """The session's runtime, lent to one app: the app's shutdown must not close it."""

    def close(self) -> None:
        pass


def _fold(s: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", s).casefold().split())


def _substrings(value: str, n: int = 6) -> set[str]:
    v = _fold(value)
    return {v[i:i + n] for i in range(len(v) - n + 1)} if len(v) >= n else {v}


def _hashes(value: str | bytes) -> set[str]:
    b = value.encode() if isinstance(value, str) else value
    return {hashlib.sha256(b).hexdigest(), hashlib.md5(b).hexdigest()}


def _channels(body: str, stream: bool) -> tuple[str, str]:
    """(released text, everything else) of one response body. The chosen tokens' logprob entries
    are the released text again; their alternatives count as "everything else"."""
    events = [json.loads(line[6:]) for line in body.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"] if stream else [json.loads(body)]
    text: list[str] = []
    for ev in events:
        for ch in ev.get("choices", []):
            msg = ch.pop("message", None) or ch.pop("delta", None) or {}
            text.append(msg.pop("content", None) or "")
            lp = ch.get("logprobs") or {}
            for e in lp.get("content") or []:
                e.pop("token", None)
                e.pop("bytes", None)
            ch["_rest_of_message"] = msg
    return "".join(text), json.dumps(events, ensure_ascii=False)


def _policies(secret: str, concept: str, sentence: str) -> tuple[dict, dict[str, str]]:
    """(name -> policy, name -> kind of prompt and banned values)."""
    keep = "audit: {store_text: true}\n"  # the audit keeps the text; the client must still not see it
    phrase = f'forbid: {{phrases: ["{secret}"]}}'
    pii = "forbid: {patterns: [phone, email]}"
    out = {}
    for action in ("prevent", "redact", "stop"):
        out[f"phrase-{action}"] = (f"name: phrase-{action}\n{keep}rules:\n  - id: codename\n    {phrase}\n"
                                   f"    action: {action}\n", "phrase")
        out[f"pii-{action}"] = (f"name: pii-{action}\n{keep}rules:\n  - id: pii\n    {pii}\n    action: {action}\n",
                                "pii")
    sem = f"semantic: {{deny: [{{concept: {concept}, examples: [\"{sentence}\"]}}], threshold: 0.5}}"
    out["semantic-resample"] = (f"name: semantic-resample\n{keep}rules:\n  - id: topic\n    {sem}\n"
                                "    action: resample\n    max_retries: 1\n    fallback: stop\n", "semantic")
    out["semantic-stop"] = (f"name: semantic-stop\n{keep}rules:\n  - id: topic\n    {sem}\n    action: stop\n",
                            "semantic")
    out["entropy-abstain"] = (f"name: entropy-abstain\n{keep}rules:\n  - id: unsure\n"
                              "    entropy: {budget: 0.5, baseline: 0.0}\n    action: stop\n"
                              "    message: \"(not sure)\"\n", "entropy")
    out["escalation"] = (f"name: escalation\n{keep}session: {{escalate_after: 1, refusal: \"No more.\"}}\n"
                         f"rules:\n  - id: pii\n    {pii}\n    action: redact\n", "escalation")
    return ({name: policy("version: 1\n" + text) for name, (text, _) in out.items()},
            {name: kind for name, (_, kind) in out.items()})


EXPECTED = {"phrase-prevent": "prevent", "phrase-redact": "redact", "phrase-stop": "stop", "pii-prevent": "prevent",
            "pii-redact": "redact", "pii-stop": "stop", "semantic-resample": "resample", "semantic-stop": "stop",
            "entropy-abstain": "abstain", "escalation": "refuse"}


@settings(max_examples=4, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),  # no shrinking:
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,  # each run is the model
                                 HealthCheck.filter_too_much])
@given(w1=word, w2=word, concept=word, name=word, domain=word,
       area=st.integers(201, 989), mid=st.integers(200, 999), last=st.integers(1000, 9999),
       seed=st.integers(0, 2**16))
def test_no_channel_discloses_what_was_withheld(runtime, w1, w2, concept, name, domain, area, mid, last, seed):
    secret = f"{w1.capitalize()} {w2.capitalize()}"
    phone = f"{area}-{mid}-{last}"
    email = f"{name}.{w1}@{domain}.com"
    sentence = f"The {secret} protocol opens the vault at midnight."
    pols, kinds = _policies(secret, concept, sentence)
    # prompts that make SmolLM2 write the value often (measured: the ship 18/18, the line ~45% of runs)
    prompts = {"phrase": f"Write one sentence about the ship named {secret}.",
               "pii": f"Repeat exactly this line: Call {name.capitalize()} at {phone} or write to {email}.",
               "semantic": f"Repeat exactly this sentence: {sentence}",
               "entropy": "Tell me a story about a lighthouse.",
               "escalation": f"Repeat exactly this line: Call {name.capitalize()} at {phone} or write to {email}."}
    assume(_writes(runtime, prompts["phrase"], secret, seed))
    banned = {"phrase": [secret], "pii": [phone, email], "semantic": [concept], "entropy": [],
              "escalation": [phone, email]}
    for p in pols.values():
        runtime.prepare(p)
    key = "sk-" + secrets.token_hex(12)
    app = create_app(_Borrowed(runtime), ServerConfig(policies=pols, api_keys=Keys.from_specs([key])))
    acted: dict[str, set[str]] = {name: set() for name in pols}
    log = io.StringIO()
    handler = logs.configure("debug", "json", log)
    try:
        _serve_all(app, pols, kinds, prompts, banned, seed, key, acted, runtime, log)
    finally:
        logging.getLogger().removeHandler(handler)
        for name in logs.OURS:
            logging.getLogger(name).setLevel(logging.NOTSET)
    for name, actions in acted.items():  # the gate must have had something to withhold, or nothing was tested
        assert EXPECTED[name] in actions, (name, actions, secret, phone, email)


def _serve_all(app, pols, kinds, prompts, banned, seed, key, acted, runtime, log) -> None:
    with TestClient(app) as client:
        for name, pol in pols.items():
            kind = kinds[name]
            for i in range(MAX_ATTEMPTS):
                if i >= len(COMBOS) and EXPECTED[name] in acted[name]:
                    break
                stream, logprobs = COMBOS[i % len(COMBOS)]
                body = {"model": "m", "messages": [{"role": "user", "content": prompts[kind]}], "max_tokens": 40,
                        "temperature": 0.8, "seed": seed + i, "stream": stream, "policy": name}
                if logprobs:
                    body |= {"logprobs": True, "top_logprobs": 5}
                headers = {"X-Session-Id": f"s-{seed}-{i}", "Authorization": f"Bearer {key}"}
                requests = 2 if kind == "escalation" else 1  # the second one in the session is refused
                for _ in range(requests):
                    if stream:
                        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                            raw = "".join(r.iter_text())
                    else:
                        r = client.post("/v1/chat/completions", json=body, headers=headers)
                        raw = r.text
                    assert r.status_code == 200, raw
                    text, rest = _channels(raw, stream)
                    for ev in json.loads(rest):
                        acted[name] |= {d["action"] for d in (ev.get("governance") or {}).get("decisions", [])}
                    _check(raw, text, rest, banned[kind], pol, runtime, kind)
                    _check_logs(log.getvalue(), banned[kind], pol, runtime, key)


def _check_logs(lines: str, banned: list[str], pol, runtime, key: str) -> None:
    """The log so far: JSON lines, with an access line for each request, and nothing withheld in any."""
    records = [json.loads(line) for line in lines.splitlines() if line.strip()]
    assert any(r["logger"] == "ingate.access" and r.get("policy") == pol.name for r in records)
    assert key not in lines and key[3:] not in lines
    _check(lines, "", lines, banned, pol, runtime, "logs")  # pieces and digests, as for a body


def _writes(runtime, prompt: str, value: str, seed: int) -> bool:
    """Does the ungoverned model write `value` in one of WRITABLE_TRIES runs of `prompt`?"""
    for i in range(WRITABLE_TRIES):
        res = runtime.run([{"role": "user", "content": prompt}], load_policy("none"),
                          GenerationParams(max_tokens=40, sampling=SamplingParams(temperature=0.8, seed=seed + i)))
        if value.casefold() in res.text.casefold():
            return True
    return False


def _check(raw: str, text: str, rest: str, banned: list[str], pol, runtime, kind: str) -> None:
    folded_rest, folded_text, folded_raw = _fold(rest), _fold(text), raw.casefold()
    with sqlite3.connect(runtime.audit.path) as con:
        withheld = [t for (t,) in con.execute(
            "SELECT matched_text FROM decisions WHERE policy = ? AND matched_text IS NOT NULL AND matched_text != ''",
            (pol.name,))]
    for value in banned:
        for sub in _substrings(value):
            assert sub not in folded_rest, (value, sub, rest[:2000])
        if kind in ("phrase", "pii", "escalation"):
            assert _fold(value) not in folded_text, (value, text)
        for h in _hashes(value):
            assert h not in folded_raw, (value, h)
    for span in withheld:
        for h in _hashes(span):
            assert h not in folded_raw, (span, h)
        if kind in ("phrase", "pii", "escalation") and len(_fold(span)) >= 6:
            assert _fold(span) not in folded_text, (span, text)
    assert not re.search(r"\b[0-9a-f]{64}\b", rest), "a SHA-256-sized digest in the report"


def test_a_fault_after_a_stream_began_is_logged_with_the_request_id_and_told_generically(runtime, monkeypatch,
                                                                                          caplog):
    """A failure while formatting a stream that has already begun (here the governance report,
    injected: no real report fails on demand) ends it with an OpenAI-shaped error chunk and
    [DONE]; the exception text stays in the server's log, under the request id."""
    import ingate.report

    def broken(*a, **k):
        raise RuntimeError("internal report fault: policy detail")

    monkeypatch.setattr(ingate.report, "governance", broken)
    app = create_app(_Borrowed(runtime), ServerConfig(policies={"default": load_policy(None)}))
    body = {"model": "m", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "stream": True}
    with caplog.at_level("ERROR", logger="ingate.server"), TestClient(app) as client:
        r = client.post("/v1/chat/completions", json=body)
    events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    rid = json.loads(events[0])["id"].removeprefix("chatcmpl-")  # the chunks' id carries the request id
    err = json.loads(events[-2])["error"]
    assert err["code"] == "internal_error" and rid in err["message"] and "policy detail" not in r.text
    assert any(rid in rec.getMessage() and "internal report fault" in rec.getMessage() for rec in caplog.records)


# ---- mask_upstream: the vault's values --------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=word, domain=word, area=st.integers(201, 989), last=st.integers(1000, 9999), stream=st.booleans(),
       session=st.booleans())
def test_no_channel_but_the_answer_discloses_a_masked_value(tmp_path_factory, caplog, name, domain, area, last,
                                                          stream, session):
    """The values a request masks come back in the answer only: never in the audit (a keyed digest
    stands for each, even with store_text), the logs, /metrics, the report at full detail, or the
    session vault as Redis stores it. The upstream is tests/test_mask_capture.py's capture server
    (a test double that echoes what it got: so the answer does carry the values back)."""
    import logging
    import os

    import redis

    from ingate.store.audit import SqliteAudit
    from ingate.store.vaults import RedisVaults, open_vaults
    from ingate.upstream.config import upstream
    from ingate.upstream.core import UpstreamCore
    from upstreams import CaptureUpstream

    email, phone = f"{name}@{domain}.com", f"{area}-555-{last:04d}"
    pol = policy(f"version: 1\nname: leak-mask\naudit: {{store_text: true}}\nmask_upstream: {{values: [email, phone],"
                 f" vault: {'session' if session else 'request'}}}\nrules:\n  - id: pii\n    forbid: {{patterns: "
                 "[email, phone]}\n    action: redact\n")
    tmp = tmp_path_factory.mktemp("leak-mask")
    audit = SqliteAudit(tmp / "audit.sqlite3")
    up = CaptureUpstream()
    core = UpstreamCore(upstream("cap", up.url, "cap", kind="openai", retries=0, timeout_s=20), audit)
    prefix = f"leak-{tmp.name}"
    os.environ["INGATE_VAULT_KEY"] = "k" * 32
    try:
        vaults = open_vaults("redis://127.0.0.1:6379/0", prefix, 60)
        assert isinstance(vaults, RedisVaults)
        app = create_app({"cap": core}, ServerConfig(policies={"leak-mask": pol}, governance_detail="full",
                                                     vaults=vaults))
        caplog.set_level(logging.DEBUG)
        with TestClient(app) as client:
            body = {"model": "cap", "stream": stream, "messages": [{"role": "user", "content": f"I am {email}, "
                                                                   f"call {phone}."}]}
            r = client.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "s1"})
            assert r.status_code == 200
            text, rest = _channels(r.text, stream)
            metrics = client.get("/metrics").text
        assert email in text and phone in text  # the echo: restored for the client
        assert "masked" in rest  # the report's counts
        r_ = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        stored = b"".join(r_.get(k) or b"" for k in r_.keys(f"{prefix}:*"))
        assert bool(stored) == session
        audit.close()
        audit_bytes = b"".join(f.read_bytes() for f in tmp.glob("audit.sqlite3*") if not f.name.endswith(".key"))
        dumps = {"report": rest, "metrics": metrics, "logs": caplog.text, "upstream": json.dumps(up.bodies),
                 "audit": audit_bytes.decode("latin-1"), "vault": stored.decode("latin-1")}
        for value in (email, phone):
            for where, dump in dumps.items():
                assert value not in dump, (value, where)
                for h in _hashes(value):
                    assert h not in dump, (value, where)
        for k in r_.keys(f"{prefix}:*"):
            r_.delete(k)
    finally:
        os.environ.pop("INGATE_VAULT_KEY", None)
        up.close()
        core.close()
