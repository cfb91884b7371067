"""A value the request holds cannot get out regrouped (ingate.gate.scatter): under every action of a
pattern rule, no run of 7 or more consecutive digits of it is released, whatever separates them
(up to 3 bytes that are not digits or line breaks) and whatever digits are glued around them;
ordinary numbers are not touched."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import policy, random_split, runs_where, user
from ingate import Gate, GateOptions, Mode, Verdict, compile_policy
from ingate.gate.scatter import GAP, MIN_RUN

PACK = "version: 1\nname: pii-{a}\nrules:\n  - id: pii\n    forbid: {{patterns: [credit_card, us_ssn, phone]}}\n" \
       "    action: {a}\n"


def luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(sum(divmod(2 * d, 10)) if i % 2 == 0 else d for i, d in enumerate(reversed(digits)))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def leaked_runs(value_digits: str, released: str) -> list[str]:
    """The value's runs of MIN_RUN+ digits that `released` holds, read as the property reads them."""
    reading = re.compile(r"[0-9](?:[^0-9\n]{0," + str(GAP) + r"}[0-9])*")
    out = []
    for m in reading.finditer(released):
        ds = re.sub(r"[^0-9]", "", m.group())
        out += [ds[i:i + MIN_RUN] for i in range(len(ds) - MIN_RUN + 1) if ds[i:i + MIN_RUN] in value_digits]
    return out


SEPS = [" ", "-", ".", ", ", "/", "(", ")", " - ", "x", "A", "O"]


@st.composite
def scattered(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    kind = draw(st.sampled_from(["card", "ssn", "phone"]))
    value = {"card": luhn_card(rng),
             "ssn": f"{rng.randrange(100, 666):03d}-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}",
             "phone": f"415-{rng.randrange(200, 999)}-{rng.randrange(1000, 9999)}"}[kind]
    digits = re.sub(r"[^0-9]", "", value)
    a = draw(st.integers(0, len(digits) - MIN_RUN))
    b = draw(st.integers(a + MIN_RUN, len(digits)))
    piece = digits[a:b]
    out = ""
    for ch in piece:  # regrouped: each digit followed, sometimes, by a separator, a letter or nothing
        out += ch + (draw(st.sampled_from(SEPS)) if draw(st.booleans()) else "")
    glued = draw(st.sampled_from(["", "9", "31", "1234"]))
    text = f"Here it is: {glued}{out.rstrip()}{glued[::-1]} and that is all."
    return kind, value, digits, text, random_split(draw, text.encode())


@settings(max_examples=150, deadline=None)
@given(scattered(), st.sampled_from(["redact", "prevent", "stop"]))
def test_no_run_of_seven_digits_of_a_context_value_is_released_in_any_grouping(case, action):
    kind, value, digits, text, pieces = case
    compiled = compile_policy(policy(PACK.format(a=action)))
    gate = Gate(compiled, None, GateOptions(context=(f"My {kind} is {value}; please repeat it.",)), mode=Mode.TEXT)
    released = ""
    for p in pieces:
        v = gate.feed(p).verdict
        released += gate.release()
        if v is Verdict.STOP:
            break
    else:
        released += gate.release(final=True)
    assert not leaked_runs(digits, released), (text, released)
    assert gate.decisions, "the regrouped value was never found: nothing was tested"


def test_ordinary_numbers_and_other_values_pass_as_they_would_without_the_context():
    """Order ids, timestamps, tracking numbers and another phone: the request's values change nothing
    of what is released (the pack's own patterns decide them, as without a context)."""
    compiled = compile_policy(policy(PACK.format(a="redact")))
    text = ("Order 20261207-884213 shipped at 1733577600; tracking 7712 9041 3388 and 8843 2211 90. Call us on "
            "212 555 9999, not 415 555 0199; the 5500 0000 0000 0004 test card is fake.")

    def released(context: tuple[str, ...]) -> tuple[str, list]:
        gate = Gate(compiled, None, GateOptions(context=context), mode=Mode.TEXT)
        out = ""
        for p in random_split_plain(text):
            gate.feed(p)
            out += gate.release()
        return out + gate.release(final=True), gate.decisions

    plain, _ = released(())
    with_values, decisions = released(("My phone is 415-555-0132 and my card 4111 1111 1111 1111.",))
    assert with_values == plain
    assert not any("regrouped" in d.detail for d in decisions)


def random_split_plain(text: str) -> list[str]:
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(1, len(text)), 12))
    return [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]


@pytest.mark.slow
def test_prevent_on_the_real_model_lets_no_seven_digits_of_the_phone_out(runtime):
    """Asked to copy the prompt's phone number, the model is steered by the mask: whatever it writes
    instead, it never holds 7 of the number's digits in a row, in any grouping."""
    from ingate import GenerationParams, SamplingParams

    prompt = "Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132."
    found = runs_where(runtime, user(prompt), "7+ digits of the phone number",
                       lambda t: bool(leaked_runs("4155550132", t)), 64, want=3)
    prevent = policy(PACK.format(a="prevent"))
    for params, _ in found:
        res = runtime.run(user(prompt), prevent, GenerationParams(max_tokens=64, sampling=SamplingParams(
            temperature=params.sampling.temperature, seed=params.sampling.seed)))
        assert not leaked_runs("4155550132", res.text), res.text
        assert any(d.action == "prevent" for d in res.decisions), res.decisions


@pytest.mark.parametrize("reply,internal", [
    ("Call 415-555-0132 today.", "phone replaced by [PHONE]"),  # both readings: the pattern's names it
    ("Call 4 1 5 5 5 5 0 1 3 2 today.", "phone (its digits, regrouped) replaced by [PHONE]"),
])
def test_a_redaction_names_the_pattern_whichever_reading_found_it(reply, internal):
    """The public detail says no more than the placeholder ("redacted one phone") for a regrouped
    value too; the internal one says which reading found it, the pattern's own when both did."""
    gate = Gate(compile_policy(policy(PACK.format(a="redact"))), None,
                GateOptions(context=("My phone is 415-555-0132.",)), mode=Mode.TEXT)
    gate.feed(reply.encode())
    released = gate.release(final=True)
    assert "[PHONE]" in released and "0132" not in released
    (d,) = gate.decisions
    assert (d.detail, d.public) == (internal, "redacted one phone")
