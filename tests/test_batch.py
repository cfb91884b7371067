"""Many governed streams at once (ingate.batch over the multi-sequence engine), against the real
embedded model.

Transparency is checked as strongly as the CPU allows: where a sequence's logits are the same bits
alone and in a batch (`engine.batch_invariant`, probed at start; true on the AVX2 and AMX-less CPUs
measured), batched text equals alone text at any temperature, rollbacks included. Where a CPU's
kernels depend on the batch's shape, the last bits differ, and only greedy identity and safety are
asserted; the test says so when it falls back.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PARIS_PROMPT, PII_PROMPT, policy, user
from ingate import GenerationParams, SamplingParams, compile_policy, generate, load_policy
from ingate.batch import Batcher
from ingate.gate.gate import Gate
from ingate.gate.masks import TokenTable

pytestmark = pytest.mark.slow
NO_EIFFEL = policy("version: 1\nname: no-eiffel\nrules:\n  - id: tower\n    forbid: {phrases: [Eiffel, tower]}\n"
                   "    action: prevent\n")
STOPPER = policy("version: 1\nname: stopper\nrules:\n  - id: city\n    forbid: {phrases: [Paris]}\n    action: stop\n")
PROMPTS = [PARIS_PROMPT, PII_PROMPT, "Tell me a story about a lighthouse keeper.",
           "List five fruits and their colours."]


@pytest.fixture(scope="module")
def engine():
    from ingate.engines.llamacpp import LlamaCppEngine

    e = LlamaCppEngine(None, n_seq=5, layout=_layout(), prefix_cache_bytes=64 << 20)
    e.probe_batch_invariance()
    yield e
    e.close()


def _layout() -> str:
    from ingate.engines import layout
    from ingate.engines.files import default_model_path

    return layout.choose(default_model_path()).layout


@pytest.fixture(scope="module")
def table(engine):
    return TokenTable(engine.token_bytes())


POLICIES = {"default": load_policy("default"), "no-eiffel": NO_EIFFEL, "stopper": STOPPER}


def _job(engine, i: int, pol: str, temp: float, seed: int, max_tokens: int = 40):
    prompt = engine.chat_prompt(user(PROMPTS[i]))
    return prompt, POLICIES[pol], GenerationParams(max_tokens=max_tokens,
                                                   sampling=SamplingParams(temperature=temp, seed=seed))


def _alone(engine, table, cache: dict, key: tuple):
    """What the job gives run alone, on the engine's own sequence (cached per job)."""
    if key not in cache:
        prompt, pol, params = _job(engine, *key)
        cache[key] = generate(engine, prompt, params, Gate(compile_policy(pol), table))
    return cache[key]


def _rolling_back(engine, table, alone: dict, want: int = 3) -> list[tuple]:
    """Jobs (Paris prompt, no-eiffel) whose run alone rolls back: the model's own sampling decides
    which seeds do on this CPU, so they are searched, and finding none fails the test."""
    found = []
    for seed in range(1, 40):
        key = (0, "no-eiffel", 0.9, seed)
        if _alone(engine, table, alone, key).rollbacks:
            found.append(key)
            if len(found) == want:
                return found
    pytest.fail(f"no seed made the no-eiffel run roll back ({len(found)} of {want}): nothing of isolation to test")


def test_batched_runs_equal_their_runs_alone_and_roll_back_on_their_own(engine, table):
    """Eight jobs, four at a time, under policies that redact, roll back (prevent) and stop: each
    one's text, finish and decisions are what it gives alone."""
    alone: dict = {}
    others = [(1, "default", 0.8, 4), (3, "stopper", 0.8, 5), (2, "default", 0.8, 7), (0, "stopper", 0.8, 9),
              (1, "default", 0.0, 0)]
    keys = _rolling_back(engine, table, alone) + others
    want = [_alone(engine, table, alone, k) for k in keys]
    b = Batcher(engine, slots=[1, 2, 3, 4])
    try:
        got: list = [None] * len(keys)

        def one(i):
            prompt, pol, params = _job(engine, *keys[i])
            got[i] = b.run(prompt, params, Gate(compile_policy(pol), table))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(keys))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert b.stats.summary()["batch_max"] > 1, "the jobs never shared a step: nothing was batched"
    finally:
        b.close()
    if not engine.batch_invariant:
        pytest.skip("this CPU's kernels change a sequence's last bits with the batch's shape (batch_invariant: "
                    "false); the greedy and safety tests below still hold")
    for w, g in zip(want, got, strict=True):
        assert (g.text, g.finish_reason, [(d.rule_id, d.action, d.token_index) for d in g.decisions]) == \
            (w.text, w.finish_reason, [(d.rule_id, d.action, d.token_index) for d in w.decisions])


def test_greedy_batched_text_equals_alone_on_any_cpu(engine, table):
    keys = [(i, "default", 0.0, 0) for i in range(4)]
    alone: dict = {}
    want = [_alone(engine, table, alone, k).text for k in keys]
    b = Batcher(engine, slots=[1, 2, 3, 4])
    try:
        jobs = [b.submit(*_submit(engine, table, k)) for k in keys]
        got = [j.wait().text for j in jobs]
    finally:
        b.close()
    assert got == want


def _submit(engine, table, key):
    prompt, pol, params = _job(engine, *key)
    return prompt, params, Gate(compile_policy(pol), table)


# ---- isolation over random interleavings ------------------------------------------------------------
action = st.one_of(st.tuples(st.just("arrive"), st.integers(0, 7)),
                   st.tuples(st.just("tick"), st.integers(1, 6)),
                   st.tuples(st.just("cancel"), st.integers(0, 7)))
KEYS = [(0, "no-eiffel", 0.8, 11), (1, "default", 0.8, 12), (2, "no-eiffel", 0.8, 13), (3, "stopper", 0.8, 14),
        (0, "stopper", 0.8, 15), (1, "default", 0.0, 0), (0, "no-eiffel", 0.8, 17), (2, "default", 0.8, 18)]
_ALONE: dict = {}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(st.lists(action, min_size=4, max_size=24))
def test_random_interleavings_never_change_a_streams_text_nor_release_a_forbidden_byte(engine, table, schedule):
    """Arrivals, steps and cancellations in any order, over three sequences for eight jobs (so some
    wait for a free one): each stream releases what it releases alone (a cancelled one, a prefix of
    it), and no released text holds a banned phrase or the phone number."""
    b = Batcher(engine, slots=[1, 2, 3], step_tokens=16, start=False)
    jobs: dict[int, tuple] = {}
    try:
        for kind, arg in schedule + [("arrive", i) for i in range(8)] + [("tick", 10_000)]:
            if kind == "arrive" and arg not in jobs:
                stop = threading.Event()
                jobs[arg] = (b.submit(*_submit(engine, table, KEYS[arg]), cancelled=stop.is_set), stop)
            elif kind == "cancel" and arg in jobs:
                jobs[arg][1].set()
            elif kind == "tick":
                for _ in range(arg):
                    if not b.tick():
                        break
        out = {}
        for i, (job, stop) in jobs.items():
            text: list[str] = []
            res = job.wait(on_text=text.append)
            out[i] = ("".join(text), res, stop.is_set())
    finally:
        b.close()
    for i, (released, res, cancelled) in out.items():
        alone = _alone(engine, table, _ALONE, KEYS[i])
        assert "eiffel" not in released.lower() and "tower" not in released.lower() or KEYS[i][1] != "no-eiffel"
        assert not re.search(r"415.?555.?0132", released)
        assert released == res.text
        if engine.batch_invariant or KEYS[i][2] == 0.0:
            if cancelled and res.finish_reason == "cancelled":
                assert alone.text.startswith(released), (i, released, alone.text)
            else:
                assert (released, res.finish_reason) == (alone.text, alone.finish_reason), i


# ---- the prefix cache --------------------------------------------------------------------------------
def test_a_prefix_cache_hit_gives_the_logits_of_the_prompt_evaluated_whole(engine):
    system = {"role": "system", "content": "You are a careful assistant for a bank. " * 12}
    first = engine.chat_prompt([system, {"role": "user", "content": "What is a savings account?"}])
    second = engine.chat_prompt([system, {"role": "user", "content": "How do I open a checking account?"}])
    a, b = engine.sequences[1], engine.sequences[2]
    cache, engine.prefix = engine.prefix, None
    try:  # the second prompt evaluated whole, with no cache
        b.start(second)
        fresh = [np.array(b.step(), copy=True)]
        for _ in range(8):
            b.accept(int(np.argmax(fresh[-1])))
            fresh.append(np.array(b.step(), copy=True))
        b.free()
    finally:
        engine.prefix = cache
    hits = cache.stats.hits
    a.start(first)
    a.step()  # its prompt is remembered once evaluated
    a.free()
    b.start(second)
    assert cache.stats.hits == hits + 1 and b.reused >= 64, cache.summary()
    hit = [np.array(b.step(), copy=True)]
    for _ in range(8):
        b.accept(int(np.argmax(hit[-1])))
        hit.append(np.array(b.step(), copy=True))
    b.free()
    assert all(x.tobytes() == y.tobytes() for x, y in zip(fresh, hit, strict=True))


# ---- through the real server -------------------------------------------------------------------------
def _stream(url: str, body: dict, seen: threading.Event | None = None) -> list[dict]:
    import json

    import httpx

    events: list[dict] = []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body | {"stream": True}, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if seen is not None and (events[-1].get("choices") or [{}])[0].get("delta", {}).get("content"):
                    seen.set()
    return events


def test_a_sigsegv_with_several_streams_in_flight_ends_each_audited_and_the_next_request_works(tmp_path):
    """Three streams share the engine's steps when it dies from a real SIGSEGV: each client gets an
    engine_crashed error event, the audit has each request (finish error, an engine decision), and
    the next request is served by a new engine process."""
    import os
    import signal
    import sqlite3

    import httpx

    from test_server import Server

    s = Server(tmp_path, "--parallel", "4")
    try:
        pid = httpx.get(s.url + "/healthz").json()["engine"]["pid"]
        body = {"model": "m", "messages": [{"role": "user", "content": PARIS_PROMPT}], "max_tokens": 400,
                "temperature": 0.8}
        seen = [threading.Event() for _ in range(3)]
        out: dict[int, list] = {}
        threads = [threading.Thread(target=lambda i=i: out.update({i: _stream(s.url, body | {"seed": i}, seen[i])}))
                   for i in range(3)]
        for t in threads:
            t.start()
        for ev in seen:
            assert ev.wait(120), "a stream released nothing"
        os.kill(pid, signal.SIGSEGV)
        for t in threads:
            t.join(120)
        for i in range(3):
            errors = [e["error"] for e in out[i] if "error" in e]
            assert [e["code"] for e in errors] == ["engine_crashed"] and "SIGSEGV" in errors[0]["message"], out[i][-2:]
            assert not any(e.get("governance") for e in out[i])
        ids = [out[i][0]["id"].removeprefix("chatcmpl-") for i in range(3)]
        with sqlite3.connect(s.audit) as con:
            for rid in ids:
                (finish,) = con.execute("SELECT finish_reason FROM requests WHERE request_id LIKE ?",
                                        (rid + "%",)).fetchone()
                engine = con.execute("SELECT count(*) FROM decisions WHERE request_id LIKE ? AND rule_id = 'engine'",
                                     (rid + "%",)).fetchone()[0]
                assert finish == "error" and engine == 1, (rid, finish, engine)
        events = _stream(s.url, body | {"seed": 9, "max_tokens": 16})
        assert not any("error" in e for e in events) and any(e.get("governance") for e in events)
        h = httpx.get(s.url + "/healthz").json()
        assert h["engine"]["restarts"] == 1 and h["engine"]["pid"] != pid
    finally:
        s.stop()


def test_the_server_batches_concurrent_clients_and_reports_its_loop_and_prefix_cache(tmp_path):
    """Four official-client streams at once share steps (/healthz's batch_max > 1), each equals its
    request served alone, two prompts with a shared system prompt hit the prefix cache, and
    /metrics carries the loop's and the cache's figures."""
    import httpx
    import openai

    from test_server import Server

    s = Server(tmp_path, "--parallel", "4")
    try:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)

        def ask(i: int, stream: bool):
            kw = dict(model="m", messages=[{"role": "user", "content": PROMPTS[i % 4]}], temperature=0.8, seed=i,
                      max_tokens=32)
            if not stream:
                return c.chat.completions.create(**kw).choices[0].message.content
            return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw)
                           if ch.choices)

        alone = [ask(i, False) for i in range(4)]
        got: dict[int, str] = {}
        threads = [threading.Thread(target=lambda i=i: got.update({i: ask(i, True)})) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [got[i] for i in range(4)] == alone
        system = {"role": "system", "content": "You answer questions about a public library's opening hours. " * 8}
        for q in ("When do you open on Monday?", "Are you open on Sunday?"):
            c.chat.completions.create(model="m", messages=[system, {"role": "user", "content": q}], max_tokens=4)
        h = httpx.get(s.url + "/healthz").json()["engine"]
        assert h["batch"]["batch_max"] > 1 and h["batch"]["slots"] == 4, h["batch"]
        assert h["prefix_cache"]["hits"] >= 1, h["prefix_cache"]
        metrics = httpx.get(s.url + "/metrics").text
        for name in ("ingate_batch_steps_total", "ingate_batch_size", "ingate_batch_active_sequences",
                     'ingate_batch_step_seconds{model="SmolLM2-135M-Instruct.Q4_1",quantile="0.99"}',
                     "ingate_prefix_cache_hits_total", "ingate_prefix_cache_tokens_reused_total"):
            assert name in metrics, name
    finally:
        s.stop()


def test_a_request_that_waits_past_its_deadline_gets_a_429_and_the_next_is_served(tmp_path):
    import httpx

    from test_server import Server

    s = Server(tmp_path, "--parallel", "1", "--max-queue-wait", "1")
    try:
        long = {"model": "m", "messages": [{"role": "user", "content": PARIS_PROMPT}], "max_tokens": 300,
                "ignore_eos": True, "temperature": 0.8, "seed": 1}
        seen = threading.Event()
        t = threading.Thread(target=lambda: _stream(s.url, long, seen))
        t.start()
        assert seen.wait(120)
        r = httpx.post(s.url + "/v1/chat/completions", timeout=300,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        t.join(300)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_timeout", r.text
        assert r.headers["Retry-After"] == "1"
        r = httpx.post(s.url + "/v1/chat/completions", timeout=300,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200
    finally:
        s.stop()
