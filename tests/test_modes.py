"""The gate's three modes, each driven by its own in-repo driver.

MASK_FIRST runs over the real embedded model the way an engine that samples itself would (the mask
applied before its own draw, no rollback). TEXT runs over text deltas: from the real model,
re-chunked at random the way a remote stream arrives, and from scripted sources for the
properties. A scripted source is the real input of this mode (a stream of text deltas), not a
stand-in for a component.

The guarantees tested (docs/architecture.md, "Architecture"):
  all modes     no byte of a prevented match is released; redactions and stops hold;
  FULL, MASK_FIRST  prevention happens before sampling: MASK_FIRST never rolls back;
  TEXT          a prevented match is withdrawn and the stream continues before it.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import PARIS_PROMPT, PHONE, PII_PROMPT, policy, random_split, user
from ingate.drivers.base import GenerationFailed
from ingate.drivers.full import generate
from ingate.drivers.mask_first import generate_mask_first
from ingate.drivers.text import govern_text
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate, Mode
from ingate.sampling import Sampler

NO_EIFFEL = policy("""
version: 1
name: no-eiffel
max_rollbacks: 8
rules:
  - id: tower
    forbid: {phrases: [Eiffel]}
    action: prevent
""")
PHONE_REDACT = policy("""
version: 1
name: phones
rules:
  - id: pii
    forbid: {patterns: [phone]}
    action: redact
""")


def _nothing_forbidden(pol, text: str) -> bool:
    """The policy's own detectors (its fold: case, separators, look-alikes) find no match in `text`."""
    return all(not d.matches(text.encode()) for d in compile_policy(pol).detectors)


def watch_withdrawals(gate: Gate) -> list[tuple[int, int]]:
    """(match start, bytes released before it was found) for each withdrawal the gate makes while
    fed. Before any cut, a prevented match always starts at or after the release point: its
    bytes were held, never shown. (A cut can revive a partial match whose start was released
    after it died; then only its completion is withdrawn, and it never shows whole.)"""
    seen: list[tuple[int, int]] = []
    feed = gate.feed

    def watched(text, *entropy):
        released, cuts, n = gate.hold.released, gate.rollbacks, len(gate.decisions)
        adm = feed(text, *entropy)
        seen.extend((d.byte_offset, released) for d in gate.decisions[n:] if d.action == "prevent" and not cuts)
        return adm

    gate.feed = watched  # type: ignore[method-assign]
    return seen


# ---- MASK_FIRST over the real model -------------------------------------------------------------
@pytest.mark.slow
def test_mask_first_prevents_before_sampling_and_never_rolls_back(runtime, eiffel_run):
    p, base = eiffel_run  # a sampling at which the ungoverned model writes "Eiffel"
    gate = Gate(runtime.prepare(NO_EIFFEL), runtime.table, mode=Mode.MASK_FIRST)
    shown: list[str] = []
    res = generate_mask_first(runtime.engine, runtime.engine.chat_prompt(user(PARIS_PROMPT)), p, gate,
                              on_text=shown.append)
    assert _nothing_forbidden(NO_EIFFEL, res.text) and "eiffel" not in res.text.lower()
    assert res.rollbacks == 0 and gate.rollbacks == 0  # nothing is ever taken back in this mode
    # Same seed, same logits: the draws agree until the one the mask changed, and it is audited.
    masked = [d for d in res.decisions if d.action == "prevent"]
    assert masked and all("masked before sampling" in d.detail for d in masked)
    assert res.text != base.text and "".join(shown) == res.text
    assert res.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_mask_first_redacts_like_the_full_loop(runtime, phone_run):
    p, _ = phone_run
    prompt = runtime.engine.chat_prompt(user(PII_PROMPT))
    full = generate(runtime.engine, prompt, p, Gate(runtime.prepare(PHONE_REDACT), runtime.table))
    first = generate_mask_first(runtime.engine, prompt, p,
                                Gate(runtime.prepare(PHONE_REDACT), runtime.table, mode=Mode.MASK_FIRST))
    assert PHONE not in first.text and "[PHONE]" in first.text
    assert first.text == full.text  # no prevent rule: the two drivers draw the same tokens


@pytest.mark.slow
def test_mask_first_spends_an_entropy_budget_and_ends_at_a_sentence(runtime):
    pol = policy("version: 1\nname: unsure\nrules:\n  - id: uncertainty\n    entropy: {budget: 6.0, baseline: 0.5}\n"
                 "    action: stop\n    message: \"(not certain enough)\"\n")
    prompt = runtime.engine.chat_prompt(user("Tell me a short story about a dragon who learns to bake."))
    for seed in range(1, 13):  # the first seed whose story spends the budget (nearly all do)
        gate = Gate(runtime.prepare(pol), runtime.table, mode=Mode.MASK_FIRST)
        res = generate_mask_first(runtime.engine, prompt, _params(200, seed), gate)
        if res.finish_reason == "content_filter":
            break
    assert res.finish_reason == "content_filter", "in 12 seeds no story spent 6 nats over a 0.5 baseline"
    assert res.text.endswith(" (not certain enough)")
    assert [d.action for d in res.decisions] == ["abstain"]


def test_the_full_loop_refuses_a_gate_of_another_mode(runtime):
    gate = Gate(runtime.prepare(NO_EIFFEL), runtime.table, mode=Mode.MASK_FIRST)
    with pytest.raises(ValueError, match="mask_first"):
        generate(runtime.engine, [1, 2], _params(), gate)
    with pytest.raises(ValueError, match="masks tokens"):
        Gate(runtime.prepare(NO_EIFFEL), None, mode=Mode.FULL)
    with pytest.raises(ValueError, match="nothing to mask"):
        Gate(runtime.prepare(NO_EIFFEL), None, mode=Mode.TEXT).mask()


# ---- TEXT over the real model, re-chunked like a remote stream -----------------------------------
def model_source(runtime, messages, p, chunk_seed: int = 0):
    """The embedded model as a remote upstream: ungoverned, its text cut into deltas of 1-12 bytes.
    A restart continues from the kept text, with the seed moved on by the attempt number, as a
    new upstream request would sample anew."""
    engine = runtime.engine
    table = engine.token_bytes()

    def source(kept: str, attempt: int):
        prompt = engine.chat_prompt(messages) + (engine.tokenize(kept) if kept else [])
        sp = p.sampling
        sampler = Sampler(replace(sp, temperature=sp.temperature if attempt == 0 else 0.8, seed=sp.seed + attempt))
        rng = random.Random(chunk_seed + attempt)
        engine.start(prompt)
        buf = b""
        for _ in range(p.max_tokens):
            tok = sampler.sample(engine.step())
            if engine.is_eog(tok):
                break
            engine.accept(tok)
            buf += table[tok]
            while len(buf) >= 12 or (buf and rng.random() < 0.5):
                n = rng.randint(1, 12)
                cut, buf = buf[:n], buf[n:]
                yield cut.decode("utf-8", errors="ignore")  # (a remote stream sends whole characters)
        if buf:
            yield buf.decode("utf-8", errors="ignore")

    return source


@pytest.mark.slow
def test_text_mode_withdraws_a_prevented_phrase_and_continues_before_it(runtime, eiffel_run):
    p, base = eiffel_run
    gate = Gate(runtime.prepare(NO_EIFFEL), None, mode=Mode.TEXT)
    first = watch_withdrawals(gate)
    shown: list[str] = []
    res = govern_text(gate, model_source(runtime, user(PARIS_PROMPT), p), on_text=shown.append)
    assert _nothing_forbidden(NO_EIFFEL, res.text) and "".join(shown) == res.text
    assert first and all(start >= released for start, released in first)
    withdrawn = [d for d in res.decisions if d.action == "prevent"]
    assert withdrawn and all("withdrawn" in d.detail and b"Eiffel".lower() in d.matched.lower() for d in withdrawn)
    assert res.rollbacks == len(withdrawn) or res.finish_reason == "content_filter"


@pytest.mark.slow
def test_text_mode_redacts_a_phone_number_split_across_deltas(runtime, phone_run):
    p, _ = phone_run
    for chunk_seed in range(3):
        gate = Gate(runtime.prepare(PHONE_REDACT), None, mode=Mode.TEXT)
        res = govern_text(gate, model_source(runtime, user(PII_PROMPT), p, chunk_seed))
        assert PHONE not in res.text and "[PHONE]" in res.text
        assert [d.action for d in res.decisions] == ["redact"] * res.text.count("[PHONE]")


@pytest.mark.slow
def test_text_mode_upstream_dying_mid_stream_releases_nothing_held(runtime, eiffel_run):
    p, _ = eiffel_run
    inner = model_source(runtime, user(PARIS_PROMPT), p)

    def dying(kept: str, attempt: int):
        for i, delta in enumerate(inner(kept, attempt)):
            if i == 20:
                raise ConnectionError("upstream closed the connection")
            yield delta

    gate = Gate(runtime.prepare(NO_EIFFEL), None, mode=Mode.TEXT)
    with pytest.raises(GenerationFailed) as e:
        govern_text(gate, dying)
    res = e.value.result
    assert res.finish_reason == "error" and res.decisions[-1].action == "error"
    assert "ConnectionError" in res.decisions[-1].detail
    assert len(res.text.encode()) <= gate.hold.released  # nothing past the release point


# ---- TEXT properties over scripted streams --------------------------------------------------------
PHRASES = ["harbor", "blue harbor", "zephyr"]
PROPS = policy(f"""
version: 1
name: props
max_rollbacks: 4
rules:
  - id: p
    forbid: {{phrases: {PHRASES}, separators: exact}}
    action: prevent
  - id: r
    forbid: {{phrases: [secret]}}
    action: redact
  - id: s
    forbid: {{phrases: [halt now]}}
    action: stop
""")
WORDS = ["blue ", "harbor", "har", "bor ", "zeph", "yr", "secret ", "halt ", "now ", "calm ", "sea ", "H", "a"]


@st.composite
def scripted(draw):
    """Up to 5 attempts of text, each delivered in random deltas: attempt i continues after a restart."""
    attempts = [draw(st.lists(st.sampled_from(WORDS), max_size=12)) for _ in range(5)]
    return [random_split(draw, "".join(a).encode()) for a in attempts]


def _script_source(script):
    def source(kept: str, attempt: int):
        for piece in script[min(attempt, len(script) - 1)]:
            yield piece.decode("utf-8", errors="ignore")
    return source


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripted())
@example([[b"halt now harbor"], [], [], [], []])  # the text kept before a withdrawal holds a stop
def test_text_mode_never_releases_a_prevented_phrase_and_redacts_what_it_shows(script):
    gate = Gate(compile_policy(PROPS), None, mode=Mode.TEXT)
    first = watch_withdrawals(gate)
    shown: list[str] = []
    res = govern_text(gate, _script_source(script), on_text=shown.append)
    assert all(start >= released for start, released in first)
    assert "".join(shown) == res.text
    visible = re.sub(r"\[REDACTED\]", " ", res.text).lower()
    assert not any(p in visible for p in PHRASES)  # separators exact: as written, case folded
    assert "secret" not in visible
    if "halt now" in gate.raw.decode().lower():
        assert res.finish_reason == "content_filter"
    assert gate.rollbacks <= 4
    assert res.rollbacks == sum(d.action == "prevent" for d in res.decisions) or res.finish_reason == "content_filter"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_text_mode_with_nothing_to_govern_releases_the_stream_as_sent(data):
    text = data.draw(st.text(alphabet="calm sea boat\n", max_size=80))
    pieces = random_split(data.draw, text.encode())
    gate = Gate(compile_policy(PROPS), None, mode=Mode.TEXT)
    res = govern_text(gate, _script_source([pieces]))
    assert res.text == text and res.finish_reason == "stop" and not res.decisions


def _params(max_tokens: int = 8, seed: int = 0):
    from conftest import gen_params

    return gen_params(max_tokens, 0.8 if seed else 0.0, seed)
