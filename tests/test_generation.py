"""Governed generation with the real embedded model: the issue's scenarios and the invariants."""

from __future__ import annotations

import dataclasses
import re
import sqlite3

import pytest

from conftest import PARIS_PROMPT, PII_PROMPT, policy, run_where, runs_where, user
from ingate.drivers.base import GenerationFailed, GenerationParams
from ingate.drivers.full import generate
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate
from ingate.patterns import BUILTIN_PATTERNS
from ingate.policy import NONE_POLICY
from ingate.sampling import SamplingParams

pytestmark = pytest.mark.slow

EIFFEL = policy("""
version: 1
name: no-eiffel
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: prevent
""")
PII_PREVENT = policy("""
version: 1
name: pii-prevent
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: prevent
""")
PII_REDACT = policy("""
version: 1
name: pii-redact
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: redact
""")
EMPTY = policy("version: 1\nname: empty\nrules: []\n")


def params(max_tokens: int = 96, temperature: float = 0.0, seed: int = 0, top_p: float = 1.0):
    return GenerationParams(max_tokens=max_tokens,
                            sampling=SamplingParams(temperature=temperature, top_p=top_p, seed=seed))


# the PII prompt rarely makes this model repeat its e-mail address; this one often writes one
EMAIL_PROMPT = "Write an e-mail signature for Jane Doe, whose address is jane.doe@example.org."


def test_prevented_phrase_never_appears_in_any_case(runtime, eiffel_run):
    p, base = eiffel_run
    res = runtime.run(user(PARIS_PROMPT), EIFFEL, p)
    assert "eiffel" not in res.text.lower()
    # governed and ungoverned agree until the gate acts; the ungoverned text has the phrase, so it acted
    assert any(d.action == "prevent" and d.rule_id == "tower" for d in res.decisions)
    assert len(res.text) > 200  # the model went on writing about Paris


def test_prevented_pii_releases_no_digits_run_and_no_address(runtime):
    def has_pii(t: str) -> bool:
        return "@" in t or bool(re.search(r"\d{3}\D?\d{3}\D?\d{4}", t))

    runs = runs_where(runtime, user(PII_PROMPT), "a phone number or an e-mail address", has_pii, 80, want=3)
    for p, _base in runs:
        res = runtime.run(user(PII_PROMPT), PII_PREVENT, p)
        digits = re.sub(r"\D", "", res.text)
        for i in range(len("4155550132") - 6):
            assert "4155550132"[i:i + 7] not in digits, res.text
        low = res.text.lower()
        assert "@" not in low and "john.smith" not in low and "smith@" not in low, res.text
        assert not re.search(r"\d{3}\D?\d{3}\D?\d{4}", res.text)
        assert any(d.action == "prevent" for d in res.decisions) or res.rollbacks > 0


@pytest.mark.parametrize("prompt,kind", [(PII_PROMPT, "phone"), (EMAIL_PROMPT, "email")])
def test_redacted_pii_is_replaced_by_placeholders(runtime, prompt, kind):
    pattern, placeholder = BUILTIN_PATTERNS[kind]
    p, base = run_where(runtime, user(prompt), f"a {kind} (the PII pack's pattern)", lambda t: re.search(pattern, t))
    res = runtime.run(user(prompt), PII_REDACT, p)
    assert placeholder in res.text and not re.search(pattern, res.text), res.text
    assert {d.action for d in res.decisions} == {"redact"}
    # redaction does not steer the model: the text is the ungoverned text with spans replaced
    pieces = re.split(r"\[(?:PHONE|EMAIL)\]", res.text)
    assert re.fullmatch(".+?".join(map(re.escape, pieces)), base.text, re.S), (res.text, base.text)


@pytest.mark.parametrize("temperature,top_p,seed", [(0.0, 1.0, 0), (0.8, 0.95, 1), (1.0, 1.0, 7)])
def test_transparency_empty_policy_equals_ungoverned(runtime, temperature, top_p, seed):
    """Invariant 4: with no rule firing, the same seed gives the same text as ungoverned."""
    p = params(64, temperature, seed, top_p)
    base = runtime.run(user(PARIS_PROMPT), NONE_POLICY, p)
    empty = runtime.run(user(PARIS_PROMPT), EMPTY, p)
    assert empty.text == base.text and empty.finish_reason == base.finish_reason
    # the default policy has rules that do not fire on this prompt: still transparent
    from ingate.policy import load_policy

    default = runtime.run(user(PARIS_PROMPT), load_policy(None), p)
    assert default.decisions == []
    assert default.text == base.text


class _Recorder:
    """Spy on the real engine: records what enters the model's context (not a mock)."""

    def __init__(self, engine):
        self.engine, self.tokens, self.snapshots = engine, [], []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def accept(self, token):
        self.tokens.append(token)
        self.snapshots.append(list(self.tokens))
        self.engine.accept(token)

    def rollback(self, n):
        del self.tokens[len(self.tokens) - n:]
        self.engine.rollback(n)


def test_forbidden_text_never_enters_the_engine(runtime, eiffel_run):
    """Invariant 2: what a mask can prevent is prevented before the token is accepted."""
    p, _ = eiffel_run
    rec = _Recorder(runtime.engine)
    gate = Gate(compile_policy(EIFFEL), runtime.table)
    prompt = runtime.engine.chat_prompt(user(PARIS_PROMPT))
    res = generate(rec, prompt, p, gate)
    assert res.rollbacks + sum(d.action == "prevent" for d in res.decisions) > 0
    tb = runtime.table.token_bytes
    for snap in rec.snapshots:
        assert b"eiffel" not in b"".join(tb[t] for t in snap).lower()


def test_fail_closed_on_a_check_error(runtime, monkeypatch, caplog):
    """Invariant 3: an error inside a check ends the stream, audited and logged with the request
    id, and releases nothing more.

    The fault is injected into a real detector (no real check fails on demand)."""
    compiled = compile_policy(PII_REDACT)
    gate = Gate(compiled, runtime.table)
    det = gate.revealers[0].d  # the first forbid check's detector
    calls = {"n": 0}
    real = det.advance

    def flaky(threads, data, pos):
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("injected detector fault")
        return real(threads, data, pos)

    monkeypatch.setattr(det, "advance", flaky)
    seen: list[str] = []
    prompt = runtime.engine.chat_prompt(user(PARIS_PROMPT))
    with caplog.at_level("ERROR", logger="ingate.drivers.full"):
        res = generate(runtime.engine, prompt, params(64), gate, on_text=seen.append, request_id="req-42")
    assert res.finish_reason == "content_filter"
    assert res.decisions[-1].action == "error" and "injected" in res.decisions[-1].detail
    (rec,) = [r for r in caplog.records if r.name == "ingate.drivers.full"]
    assert "req-42" in rec.getMessage() and "injected detector fault" in str(rec.exc_info[1])
    assert res.completion_tokens == 5
    assert "".join(seen) == res.text
    assert len(res.text.encode()) <= len(bytes(gate.raw))


def test_decisions_are_durable_before_their_text_is_seen(runtime, phone_run):
    """Invariant 5: when a placeholder reaches the client, its decision is already committed."""
    db = runtime.audit.path
    checks: list[int] = []

    def on_text(text: str) -> None:
        if "[PHONE]" in text:
            with sqlite3.connect(db) as con:  # a separate connection sees only committed rows
                n = con.execute("SELECT COUNT(*) FROM decisions WHERE action='redact' AND rule_id='pii'"
                                " AND detail LIKE '%[PHONE]%'").fetchone()[0]
            checks.append(n)

    runtime.run(user(PII_PROMPT), PII_REDACT, phone_run[0], on_text=on_text)
    assert checks and all(n >= 1 for n in checks)


def test_stop_ends_with_content_filter_and_releases_only_the_prefix(runtime):
    stop = policy("""
version: 1
name: stop-tower
rules:
  - id: tower
    forbid: {phrases: [Eiffel Tower]}
    action: stop
""")
    p, base = run_where(runtime, user(PARIS_PROMPT), "'Eiffel Tower'", lambda t: "eiffel tower" in t.lower(), 120)
    res = runtime.run(user(PARIS_PROMPT), stop, p)
    assert res.finish_reason == "content_filter"
    assert "eiffel" not in res.text.lower()
    assert base.text.startswith(res.text) and base.text.lower().index("eiffel tower") >= len(res.text)


def test_engine_failure_mid_stream_is_audited_and_releases_nothing_more(runtime, monkeypatch):
    """An engine that dies mid-stream: the error is audited, held text stays held, the caller hears.

    The failure is injected into the real engine's step() (a real decode cannot be made to fail)."""
    from ingate.engines.base import EngineError

    gate = Gate(compile_policy(PII_REDACT), runtime.table)
    real_step, calls = runtime.engine.step, {"n": 0}

    def dying_step():
        calls["n"] += 1
        if calls["n"] == 12:
            raise EngineError("injected: decode failed")
        return real_step()

    monkeypatch.setattr(runtime.engine, "step", dying_step)
    audited: list = []
    seen: list[str] = []
    prompt = runtime.engine.chat_prompt(user(PII_PROMPT))
    with pytest.raises(GenerationFailed) as err:
        generate(runtime.engine, prompt, params(64), gate, on_text=seen.append, on_decisions=audited.extend)
    assert isinstance(err.value.cause, EngineError) and err.value.result.finish_reason == "error"
    assert err.value.result.text == gate.text and err.value.result.completion_tokens == 11
    assert audited[-1].action == "error" and audited[-1].rule_id == "engine"
    assert "".join(seen) == gate.text
    assert "415-555-01" not in gate.text


def test_logprobs_cover_released_text_and_never_show_governed_alternatives(runtime, phone_run, eiffel_run):
    """Alternatives are hidden when they could begin, continue or complete a governed match. The
    token actually released at a position is always listed: the client sees it in the text anyway
    (on some CPUs "e" of "Concorde" is released, and "e" could begin "Eiffel")."""
    res = runtime.run(user(PII_PROMPT), PII_REDACT, dataclasses.replace(phone_run[0], logprobs=5))
    assert res.logprobs and "".join(e["token"] for e in res.logprobs) == res.text
    assert any(e["token"] == "[PHONE]" and e["top_logprobs"] == [] for e in res.logprobs)
    for e in res.logprobs:
        assert e["logprob"] <= 0.0
        for alt in e["top_logprobs"]:
            if alt["token"] != e["token"]:
                assert not any(c.isdigit() for c in alt["token"]), alt  # a digit would begin a phone number
    res = runtime.run(user(PARIS_PROMPT), EIFFEL, dataclasses.replace(eiffel_run[0], logprobs=5))
    shown = [(e["token"].lower(), a["token"].lower()) for e in res.logprobs for a in e["top_logprobs"]]
    assert shown
    for released, alt in shown:
        assert "eif" not in alt, alt
        if alt != released:  # "e", "ei", " E": the start of "Eiffel", not the token the client already has
            assert not "eiffel".startswith(alt.strip()) or not alt.strip(), (released, alt)
