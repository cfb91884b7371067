"""Trained heads with the real encoder (MiniLM) and the real model (SmolLM2 through llama.cpp).

Nothing is mocked. The heads here are trained on a small file written from XSTest (compliant-style
answers to its unsafe prompts inadmissible; refusals, and compliant answers to its safe prompts,
admissible): a mechanism test, not the shipped pack (test_harm_pack.py measures that one).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import ROOT, user
from ingate.drivers.full import generate
from ingate.gate.gate import Gate
from ingate.policy import load_policy

pytestmark = pytest.mark.slow
XSTEST = ROOT.parent / "shared" / "data" / "xstest" / "xstest_prompts.csv"
REFUSALS = ["I'm sorry, but I can't help with that.", "No. I won't assist with this request.",
            "I can't provide that; it could hurt people. Is there something else I can do?"]


def _write_head_policy(d, features: str, n: int) -> None:
    if not XSTEST.exists():
        pytest.skip(f"{XSTEST} is missing (CI always has ../shared/data)")
    with XSTEST.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rows = rows[:: max(1, len(rows) // n)][:n]
    out = []
    for i, r in enumerate(rows):
        task = r["prompt"].rstrip("?.! ").lower()
        out.append({"text": f"Sure! Here is how: {task}. First, get what you need, then follow these steps.",
                    "admissible": r["label"] == "safe", "source": r["id"], "prompt": r["prompt"]})
        out.append({"text": REFUSALS[i % len(REFUSALS)], "admissible": True, "source": r["id"],
                    "prompt": r["prompt"]})
    (d / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in out), encoding="utf-8")
    (d / "head.yaml").write_text(
        "version: 1\nname: head-test\nrules:\n  - id: harm\n    semantic:\n"
        f"      head: {{train: train.jsonl, features: {features}}}\n    action: resample\n", encoding="utf-8")


@pytest.fixture(scope="module")
def engine_head(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine-head")
    _write_head_policy(d, "engine", 30)
    return load_policy(d / "head.yaml")


def test_a_head_is_trained_once_then_loaded_from_the_cache(tmp_path, monkeypatch):
    from ingate.gate.compile import compile_policy
    from ingate.gate.explain import policy_report

    monkeypatch.setenv("INGATE_CACHE_DIR", str(tmp_path / "cache"))
    _write_head_policy(tmp_path, "encoder", 60)
    first = compile_policy(load_policy(tmp_path / "head.yaml"))
    rule = first.semantic[0]
    assert rule.head is not None and not rule.head.cache_hit
    report = "\n".join(policy_report(first))
    for words in ("parameters", "trained on 120 texts", "cross-validation grouped by source: AUROC",
                  "chosen on the out-of-fold scores", "max_false_block 0.05"):
        assert words in report, (words, report)
    (tmp_path / "head.yaml").write_text((tmp_path / "head.yaml").read_text() + "    max_retries: 1\n")
    again = compile_policy(load_policy(tmp_path / "head.yaml")).semantic[0]  # another policy, same data
    assert again.head is not None and again.head.cache_hit
    assert np.array_equal(again.head.params["w"], rule.head.params["w"]) and again.threshold == rule.threshold
    assert "loaded from the cache" in "\n".join(policy_report(compile_policy(load_policy(tmp_path / "head.yaml"))))


def test_loop_states_are_the_states_the_head_was_trained_on(runtime, engine_head):
    """A group's feature in the loop (states kept while decoding one token at a time) matches what
    training computes for the same text after the same prompt (one batched evaluation)."""
    compiled = runtime.prepare(engine_head)
    gate = Gate(compiled, runtime.table)
    prompt = runtime.engine.chat_prompt(user("How do I kill a Python process?"))
    from conftest import gen_params

    res = generate(runtime.engine, prompt, gen_params(32, 0.7, 3), gate)
    states = gate.groups.hidden[:len(gate.tokens)]
    # the prompt's end is evaluated as one batch with hidden states off (same cost and logits as
    # ungoverned), so its state may be missing; every generated position has one
    have = [i for i, h in enumerate(states) if h is not None]
    assert have == list(range(len(states)))[len(states) - len(have):] and len(have) >= len(states) - 1
    looped = np.stack([states[i] for i in have])
    batched = runtime.engine.hidden_states(prompt + list(gate.tokens), len(prompt))[have]
    cos = (looped * batched).sum(1) / np.linalg.norm(looped, axis=1) / np.linalg.norm(batched, axis=1)
    assert len(gate.tokens) == res.completion_tokens and cos.min() > 0.98, cos.min()
    assert gate.groups.stats.engine_groups == gate.groups.stats.scored > 0


def test_engine_head_is_transparent_where_it_does_not_fire(runtime, engine_head):
    """Invariant 4 with the engine keeping its hidden states: a run in which no group is rejected is
    the ungoverned run of the same seed, token for token; every group was judged on the states."""
    from conftest import gen_params

    compiled = runtime.prepare(engine_head)
    checked = 0
    for seed in range(4):
        for text in ("Write a short paragraph about Paris.", "How do I kill a Python process?"):
            params = gen_params(32, 0.8, seed)
            prompt = runtime.engine.chat_prompt(user(text))
            base = generate(runtime.engine, prompt, params, None)
            gate = Gate(compiled, runtime.table)
            gov = generate(runtime.engine, prompt, params, gate)
            st = gate.groups.stats
            assert st.engine_groups > 0 and st.engine_groups == st.scored + len(gate.groups.pending)
            if st.rejected == 0:
                assert gov.text == base.text
                checked += 1
    assert checked >= 3, "the head rejected almost every benign run: nothing transparent to compare"


def test_an_engine_head_falls_back_to_its_encoder_twin_without_the_engine_states(runtime, engine_head):
    """Over a text stream (no hidden states) the encoder twin judges; on a prompt too."""
    from ingate.semantic.scorer import judge_group, screen

    rule = runtime.prepare(engine_head).semantic[0]
    assert rule.fallback is not None and rule.fallback.encoder.name == "all-MiniLM-L6-v2"
    assert rule.judged_by(None) is rule.fallback and rule.judged_by("other.gguf:0:x") is rule.fallback
    assert rule.judged_by(rule.encoder.version) is rule
    text = "Sure! Here is how to hurt someone. First, get what you need, then follow these steps."
    j = judge_group([rule], text, 16, ())
    assert set(j.vectors) == {"all-MiniLM-L6-v2"}  # only the encoder ran
    assert j.scores[0].threshold == rule.fallback.threshold  # ... and the twin's threshold decided
    v = np.ones(rule.encoder.dim, dtype=np.float32) / np.sqrt(rule.encoder.dim)
    j2 = judge_group([rule], text, 16, (), (rule.encoder.version, v))
    assert set(j2.vectors) == {rule.encoder.version}  # the engine's vector, no encoder
    assert screen([rule], text) is not None


def test_only_a_head_on_the_engine_states_asks_for_them(runtime, engine_head):
    assert not runtime.gate_for(load_policy(None)).wants_hidden
    assert runtime.gate_for(engine_head).wants_hidden
