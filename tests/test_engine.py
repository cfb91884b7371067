"""The engine on any CPU: weight layouts, the layout probe and its fallback, the engine process
and its crash recovery, and the thread tuner. Real model, real llama.cpp, real signals."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess

import numpy as np
import pytest

from conftest import INGATE, PII_PROMPT, gen_params, policy, user
from ingate.compose import isolated
from ingate.core import Request
from ingate.drivers.base import GenerationFailed
from ingate.engine_core import EngineCore
from ingate.engines import EngineCrashed, EngineError, layout, load_engine
from ingate.engines.llamacpp import LlamaCppEngine, default_model_path
from ingate.engines.threads import ThreadTuner, candidates, thread_setting

STORY = user("Tell me a story about a dragon who guards a lighthouse.")


@pytest.fixture(scope="module")
def safe_layouts() -> list[str]:
    """The layouts this machine can run: the probe's verdict and everything slower than it."""
    chosen = layout.probe(default_model_path()).layout
    return {"on": ["on", "split", "off"], "split": ["split", "off"], "off": ["off"]}[chosen]


def greedy_logits(engine, prompt: list[int], n: int, rollback_at: int | None = None) -> np.ndarray:
    """Logits of n greedy steps; with `rollback_at`, two tokens are taken back there and redone."""
    engine.start(prompt)
    out = [np.array(engine.step(), copy=True)]
    for i in range(n):
        engine.accept(int(np.argmax(out[-1])))
        x = np.array(engine.step(), copy=True)
        if rollback_at == i:
            engine.rollback(2)
            x = np.array(engine.step(), copy=True)
            np.testing.assert_array_equal(x, out[-2])  # the distribution at the rollback point, exactly
            engine.accept(int(np.argmax(x)))
            x = np.array(engine.step(), copy=True)
        out.append(x)
    return np.stack(out)


# ---- thread tuner (logic only: synthetic timings) ----------------------------------------------
def feed(tuner: ThreadTuner, ms: dict[int, float], steps: int) -> None:
    for _ in range(steps):
        n = tuner.record(ms[tuner.current] / 1000)
        assert n is None or n == tuner.current


def test_tuner_measures_every_candidate_then_runs_the_fastest():
    t = ThreadTuner([1, 2, 4], window=8, explore_every=64, explore_steps=4)
    feed(t, {1: 10.0, 2: 4.0, 4: 6.0}, 12)
    assert t.current == 2 and set(t.estimate) == {1, 2, 4} and all(t.estimate.values())


def test_tuner_prefers_fewer_threads_when_no_faster():
    t = ThreadTuner([1, 2], window=8, explore_steps=4)
    feed(t, {1: 10.0, 2: 9.5}, 8)  # within the 10% margin: one thread does as well
    assert t.current == 1


def test_tuner_leaves_a_count_that_gets_slow_and_comes_back_when_it_recovers():
    t = ThreadTuner([1, 2], window=8, explore_every=32, explore_steps=4)
    feed(t, {1: 10.0, 2: 4.0}, 8)
    assert t.current == 2
    feed(t, {1: 10.0, 2: 16.0}, 8)  # another process takes a core: two threads now lose
    assert t.current == 1
    feed(t, {1: 10.0, 2: 4.0}, 80)  # the core is free again: re-measured, and taken back
    assert t.current == 2


def test_thread_settings_are_validated(monkeypatch):
    monkeypatch.setenv("INGATE_THREADS", "many")
    with pytest.raises(EngineError, match="INGATE_THREADS"):
        thread_setting()
    monkeypatch.setenv("INGATE_THREADS", "0")
    with pytest.raises(EngineError, match="at least 1"):
        thread_setting()
    monkeypatch.setenv("INGATE_THREADS", "3")
    assert thread_setting() == 3
    monkeypatch.setenv("INGATE_THREADS", "auto")
    assert thread_setting() is None and candidates(2) == [1, 2] and candidates(12) == [1, 2, 4, 8, 12]


def test_layout_and_isolation_settings_are_validated(monkeypatch):
    monkeypatch.setenv("INGATE_LLAMA_REPACK", "fast")
    with pytest.raises(EngineError, match="INGATE_LLAMA_REPACK='fast' is not one of auto, on, off, split"):
        load_engine()
    monkeypatch.setenv("INGATE_ENGINE_PROCESS", "maybe")
    with pytest.raises(EngineError, match="INGATE_ENGINE_PROCESS"):
        isolated()


# ---- layouts, on the real model -----------------------------------------------------------------
@pytest.mark.slow
def test_thread_count_never_changes_the_logits(safe_layouts):
    """The tuner switches threads between tokens; that is safe only because the bits are the same."""
    for lay in safe_layouts:
        eng = LlamaCppEngine(layout=lay, n_threads=1)
        try:
            prompt = eng.chat_prompt(STORY)
            one = greedy_logits(eng, prompt, 24)
            eng.set_threads(2)
            two = greedy_logits(eng, prompt, 24)
            np.testing.assert_array_equal(one, two, err_msg=f"layout {lay}")
        finally:
            eng.close()


@pytest.mark.slow
def test_a_rollback_leaves_the_state_a_fresh_run_would_have(safe_layouts):
    """Rolled back to the first generated token or later, then decoded on: the logits are bit for
    bit those of decoding the surviving tokens afresh, in every layout (the prompt's last token is
    not re-evaluated alone, which would take other kernels than the prompt's batch)."""
    for lay in safe_layouts:
        eng = LlamaCppEngine(layout=lay, n_threads=1)
        try:
            prompt = eng.chat_prompt(STORY)
            fresh = greedy_logits(eng, prompt, 12)
            eng.start(prompt)
            x = eng.step()
            for _ in range(5):  # five tokens, all taken back
                eng.accept(int(np.argmax(x)))
                x = eng.step()
            eng.rollback(5)
            np.testing.assert_array_equal(eng.step(), fresh[0], err_msg=lay)
            got = [np.array(eng.step(), copy=True)]
            for _ in range(12):
                eng.accept(int(np.argmax(got[-1])))
                got.append(np.array(eng.step(), copy=True))
            np.testing.assert_array_equal(np.stack(got), fresh, err_msg=lay)
        finally:
            eng.close()


@pytest.mark.slow
def test_every_safe_layout_computes_the_same_distribution(safe_layouts):
    firsts = {}
    for lay in safe_layouts:
        eng = LlamaCppEngine(layout=lay, n_threads=2)
        try:
            firsts[lay] = greedy_logits(eng, eng.chat_prompt(STORY), 0)[0]
        finally:
            eng.close()
    ref = firsts["off"]
    for lay, x in firsts.items():
        assert np.corrcoef(x, ref)[0, 1] > 0.98, lay
        assert int(np.argmax(x)) in np.argsort(-ref)[:5], lay


REDACT = policy("version: 1\nname: pii\nrules:\n  - id: pii\n    forbid: {patterns: [email, phone]}\n"
                "    action: redact\n")


@pytest.mark.slow
def test_the_engine_core_process_gives_what_the_runtime_gives_in_process(runtime, tmp_path):
    """The process boundary changes nothing: same text, decisions and logprobs, seed for seed."""
    core = EngineCore(default_model_path(), tmp_path / "audit.sqlite3", [REDACT])
    try:
        for seed in (0, 1, 2):
            p = dataclasses.replace(gen_params(48, 0.8 if seed else 0.0, seed), logprobs=2)
            a = runtime.run(user(PII_PROMPT), REDACT, p)
            seen: list[str] = []
            b = core.run(Request(user(PII_PROMPT), REDACT, p), on_text=seen.append)
            assert (b.text, b.finish_reason, b.completion_tokens) == (a.text, a.finish_reason, a.completion_tokens)
            assert "".join(seen) == b.text and b.logprobs == a.logprobs
            assert [(d.rule_id, d.action, d.byte_offset) for d in b.decisions] == \
                [(d.rule_id, d.action, d.byte_offset) for d in a.decisions]
    finally:
        core.close()
    assert not core.alive


@pytest.mark.slow
def test_a_caller_that_fails_mid_stream_leaves_the_core_clean(tmp_path):
    """A text callback that raises (a closed stdout) cancels the core's generation; the next
    request gets its own text, not the rest of the abandoned one."""
    core = EngineCore(default_model_path(), tmp_path / "audit.sqlite3", [REDACT])
    try:
        req = Request(user(PII_PROMPT), REDACT, gen_params(48))
        want = core.run(req)

        def broken(_t: str) -> None:
            raise BrokenPipeError("stdout closed")

        long = Request(user("Tell me a long story about a dragon."), REDACT,
                       dataclasses.replace(gen_params(200), ignore_eos=True))
        with pytest.raises(BrokenPipeError):
            core.run(long, on_text=broken)
        again = core.run(req)
        assert (again.text, again.completion_tokens) == (want.text, want.completion_tokens) and core.alive
    finally:
        core.close()


@pytest.mark.slow
def test_a_native_crash_costs_the_request_in_flight_and_a_restart_serves_again(tmp_path):
    """SIGSEGV to the real engine process mid-generation: the caller gets EngineCrashed naming the
    signal, what was released is what the crashed run had released, the audit has the request
    (finish_reason error) and its error, and a new process serves the same request in full."""
    audit = tmp_path / "audit.sqlite3"
    core = EngineCore(default_model_path(), audit, [REDACT])
    req = Request(user("Tell me a long story about a dragon who guards a lighthouse."), REDACT,
                  dataclasses.replace(gen_params(300, 0.8, 7), ignore_eos=True), request_id="doomed")
    first_pid = core.pid
    seen: list[str] = []

    def on_text(t: str) -> None:
        seen.append(t)
        if len(seen) == 3:
            os.kill(first_pid, signal.SIGSEGV)

    try:
        with pytest.raises(GenerationFailed) as err:
            core.run(req, on_text=on_text)
        cause, partial = err.value.cause, err.value.result
        assert isinstance(cause, EngineCrashed)
        assert "SIGSEGV" in str(cause) and f"pid {first_pid}" in str(cause) and "while generating" in str(cause)
        assert "INGATE_LLAMA_REPACK=off" in str(cause) or core.layout == "off"
        assert partial.finish_reason == "error" and partial.text == "".join(seen) and partial.completion_tokens >= 3
        assert not core.alive and core.info()["process"]["last_crash"]
        # the next request starts a new process (the server cannot tell which of the requests in
        # flight killed it, so it does not wait for an operator): one restart, then none
        again = core.run(dataclasses.replace(req, request_id="again"))
        assert core.alive and core.pid != first_pid and core.restarts == 1
        assert core.ensure_alive() is False
        assert again.text.startswith(partial.text) and again.completion_tokens == 300
    finally:
        core.close()
    import sqlite3

    with sqlite3.connect(audit) as con:
        rows = dict(con.execute("SELECT request_id, finish_reason FROM requests").fetchall())
        errs = con.execute("SELECT rule_id, detail FROM decisions WHERE request_id='doomed' AND action='error'"
                           ).fetchall()
    assert rows["doomed"] == "error" and rows["again"] == "length"
    assert len(errs) == 1 and errs[0][0] == "engine" and "SIGSEGV" in errs[0][1]


# ---- the probe and its fallback -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("stage,expected", [("batch", "split"), ("decode", "off"), ("load", "off")])
def test_auto_falls_back_when_the_probe_dies_and_caches_the_verdict(tmp_path, monkeypatch, stage, expected):
    """The probe really dies from SIGSEGV (sent to itself at that stage), on any CPU."""
    monkeypatch.setenv("INGATE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INGATE_PROBE_CRASH", stage)
    monkeypatch.delenv("INGATE_LLAMA_REPACK", raising=False)
    choice = layout.choose(default_model_path())
    assert choice.layout == expected and not choice.cached
    assert choice.stages[stage] == {"ok": False, "error": "died from SIGSEGV"}
    assert "SIGSEGV" in choice.reason
    again = layout.choose(default_model_path())
    assert again.cached and again.layout == expected and again.cache_file == choice.cache_file


@pytest.mark.slow
def test_a_forced_layout_skips_the_probe(tmp_path, monkeypatch):
    monkeypatch.setenv("INGATE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("INGATE_LLAMA_REPACK", "off")
    monkeypatch.setenv("INGATE_PROBE_CRASH", "load")  # would be seen if a probe ran
    choice = layout.choose(default_model_path())
    assert choice.layout == "off" and choice.stages == {} and not (tmp_path / "probe").exists()


@pytest.mark.slow
def test_after_a_fallback_the_cli_still_generates_and_doctor_says_why(tmp_path):
    env = dict(os.environ, INGATE_CACHE_DIR=str(tmp_path), INGATE_PROBE_CRASH="batch",
               INGATE_AUDIT=str(tmp_path / "audit.sqlite3"))
    env.pop("INGATE_LLAMA_REPACK", None)
    r = subprocess.run([INGATE, "generate", "Name three colours.", "--policy", "none", "--max-tokens", "24"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 5
    r = subprocess.run([INGATE, "doctor", "--json"], capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(r.stdout)
    assert r.returncode == 1  # the probe crashed: a failing check, with what to do
    checks = {c["check"]: c for c in report["checks"]}
    assert not checks["layout"]["ok"] and "split" in checks["layout"]["detail"] and checks["layout"]["fix"]
    assert checks["engine"]["ok"] and report["facts"]["engine"]["layout"] == "split"
    assert report["facts"]["layout"]["cached"] is True  # generate probed once; doctor read the verdict


@pytest.mark.slow
def test_doctor_reports_what_a_bug_report_needs(tmp_path):
    env = dict(os.environ, INGATE_AUDIT=str(tmp_path / "audit.sqlite3"))
    r = subprocess.run([INGATE, "doctor"], capture_output=True, text=True, env=env, timeout=300)
    out = r.stdout
    for needle in ("cpu:", "flags:", "llama.cpp system info:", "layout:", "threads:", "llama-cpp-python 0.3",
                   "torch", "sentence-transformers", "ok    model:", "ok    engine:", "ok    audit:", "encoder"):
        assert needle in out, (needle, out)


@pytest.mark.slow
@pytest.mark.parametrize("flag,value,check,words", [
    ("--model", "/nonexistent/model.gguf", "model", "does not exist; pass --model PATH"),
    ("--audit", "/proc/ingate/audit.sqlite3", "audit", "writable"),
])
def test_doctor_fails_with_one_line_that_says_what_to_do(tmp_path, flag, value, check, words):
    env = dict(os.environ, INGATE_AUDIT=str(tmp_path / "audit.sqlite3"))
    r = subprocess.run([INGATE, "doctor", flag, value], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1
    line = next(x for x in r.stdout.splitlines() if x.startswith(f"FAIL  {check}:"))
    assert words in line


def test_engine_specs_name_the_engine_and_unknown_ones_list_the_known():
    from ingate.engines import EngineError, parse_spec

    assert parse_spec(None) == ("llama.cpp", None)
    assert parse_spec("/models/x.gguf") == ("llama.cpp", "/models/x.gguf")
    assert parse_spec("llama.cpp:/models/x.gguf") == ("llama.cpp", "/models/x.gguf")
    assert parse_spec("C:\\models\\x.gguf") == ("llama.cpp", "C:\\models\\x.gguf")
    with pytest.raises(EngineError, match=r"unknown engine 'vllm'.*llama\.cpp:PATH"):
        parse_spec("vllm:http://127.0.0.1:8000")


def test_the_embedded_engine_declares_what_the_governed_loop_needs(runtime):
    from ingate.engines import FULL_LOGITS, ROLLBACK

    assert {FULL_LOGITS, ROLLBACK} <= runtime.engine.capabilities
    assert runtime.engine.info()["capabilities"] == sorted(runtime.engine.capabilities)


def test_the_governed_loop_refuses_an_engine_that_cannot_roll_back(runtime):
    """A test double of an engine that declares no rollback: the loop says what it lacks before
    generating (the real engine always can, so it cannot stand in here)."""
    from ingate.drivers.base import GenerationParams
    from ingate.drivers.full import generate
    from ingate.engines import EngineError
    from ingate.gate.compile import compile_policy
    from ingate.gate.gate import Gate
    from ingate.policy import load_policy

    class NoRollback:
        name, vocab_size, n_ctx, capabilities = "no-rollback", 4, 64, frozenset({"full_logits"})

    gate = Gate(compile_policy(load_policy(None)), runtime.table)
    with pytest.raises(EngineError, match="lacks rollback"):
        generate(NoRollback(), [1], GenerationParams(max_tokens=4), gate)
