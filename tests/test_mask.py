"""mask_upstream (ingate.masking): the vault, placeholders, forging, and the answer restored byte for
byte however its stream is split.

Restoration over every split runs the real pipeline (`govern`, a TEXT gate, the restorer) on
deltas listed in the test, and over HTTP against `ScriptedUpstream`, a test double that replays
the masked text split where the test says (tests/upstreams.py says why no real server can).
tests/test_mask_capture.py checks what a real HTTP upstream receives; the real model's round trip
is there too.
"""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import gen_params, policy, user
from ingate.core import Request, Sinks, govern
from ingate.drivers.text import govern_text
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate, Mode
from ingate.masking import Masking, Vault
from ingate.masking.placeholders import partial_at
from ingate.policy import PolicyError, parse_policy
from ingate.report import governance
from ingate.store.audit import SqliteAudit

MASK = policy("""
version: 1
name: mask
mask_upstream: [email, phone, credit_card, us_ssn, itin]
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: redact
""")
EMAIL, EMAIL2, PHONE, CARD = "john.smith@example.com", "ana@corp.org", "415-555-0132", "4111 1111 1111 1111"
TEXT = f"Mail {EMAIL} or call {PHONE}; card {CARD}, again {EMAIL}, and {EMAIL2}."


def _policy(extra: str = "", mask: str = "[email, phone, credit_card]") -> object:
    return policy(f"version: 1\nname: m\nmask_upstream: {mask}\n{extra or 'rules: []'}\n")


class _Drive:
    """Drives a TEXT gate over deltas given by the test: the pipeline around it is the real one."""

    def __init__(self, deltas):
        self.deltas, self.seen = deltas, None

    def prepare(self, req):
        self.seen = req
        return 0

    def compiled(self, pol):
        return compile_policy(pol)

    def gate(self, compiled, req):
        return Gate(compiled, None, req.gate_options(), mode=Mode.TEXT)

    def drive(self, gate, req, on_text, on_decisions, cancelled):
        return govern_text(gate, lambda kept, attempt: iter(self.deltas(req) if callable(self.deltas)
                                                              else self.deltas), on_text, on_decisions)


def _run(pol, text, deltas, audit=None, structure=None):
    out: list[str] = []
    d = _Drive(deltas)
    res = govern(Request(user(text), pol, gen_params(256), structure=structure), audit, d, Sinks(on_text=out.append))
    return "".join(out), res, d.seen


# ---- the policy -------------------------------------------------------------------------------------
def test_the_option_takes_a_list_or_a_block_and_names_only_what_exists():
    assert _policy().mask.values == ("email", "phone", "credit_card")
    p = policy("version: 1\nname: m\nmask_upstream: {values: [names], answer: redact, vault: session}\nrules:\n"
               "  - id: names\n    forbid: {phrases: [Project Falcon]}\n    action: prevent\n")
    assert (p.mask.values, p.mask.answer, p.mask.vault) == (("names",), "redact", "session")
    with pytest.raises(PolicyError, match="mask_upstream: 'emails' is neither a built-in pattern"):
        parse_policy("version: 1\nname: m\nmask_upstream: [emails]\n")
    with pytest.raises(PolicyError, match="answer"):
        parse_policy("version: 1\nname: m\nmask_upstream: {values: [email], answer: show}\n")


# ---- the vault ----------------------------------------------------------------------------------------
def test_one_value_one_placeholder_distinct_values_distinct_placeholders():
    m = Masking.start(MASK)
    masked = m.text(TEXT)
    assert masked == ("Mail [EMAIL_1] or call [PHONE_1]; card [CREDIT_CARD_1], again [EMAIL_1], and [EMAIL_2].")
    assert m.vault.values == {"[EMAIL_1]": EMAIL, "[PHONE_1]": PHONE, "[CREDIT_CARD_1]": CARD, "[EMAIL_2]": EMAIL2}
    assert m.counts() == {"credit_card": 1, "email": 3, "phone": 1}
    assert m.text(f"again {EMAIL2}") == "again [EMAIL_2]"  # the same vault throughout the request


def test_encoded_values_and_itins_are_masked_too():
    m = Masking.start(MASK)
    for raw in ("name%40example.com", "name&#64;example&#46;com", "name\\u0040example.com", "x&commat;y.io",
                "415&nbsp;555&nbsp;0132", "912-78-1234"):
        assert raw not in m.text(f"see {raw} now"), raw


def test_a_placeholder_written_by_the_client_is_masked_and_comes_back_as_written():
    m = Masking.start(MASK)
    masked = m.text(f"{EMAIL} and the literal [EMAIL_2], [Email 1] and [phone_1]")
    assert masked == "[EMAIL_1] and the literal [LITERAL_1], [LITERAL_2] and [LITERAL_3]"
    r = m.restorer(None)
    assert r.feed(masked) + r.flush() == f"{EMAIL} and the literal [EMAIL_2], [Email 1] and [phone_1]"


_VALUES = st.sampled_from([EMAIL, EMAIL2, PHONE, CARD, "912-78-1234", "bob%40mail.net", "[EMAIL_1]", "[PHONE]"])
_FILL = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_FILL, _VALUES), max_size=6), _FILL)
def test_masking_hides_every_value_and_restoring_gives_the_text_back(parts, tail):
    text = "".join(f + v for f, v in parts) + tail
    m = Masking.start(MASK)
    masked = m.text(text)
    found = m.finder.find(text)
    assert sorted({text[s:e] for s, e, _ in found}) == sorted(m.vault.values.values())
    for s, e, _ in m.finder.find(masked):  # nothing covered is left: what the finder reads is the vault's own
        assert masked[s:e] in m.vault.values
    r = m.restorer(None)
    if r is not None:
        assert r.feed(masked) + r.flush() == text


def test_a_session_vault_keeps_numbering_and_merges():
    v = Vault()
    v.put("EMAIL", EMAIL)
    w = Vault.from_json(v.to_json())
    assert w.put("EMAIL", EMAIL) == "[EMAIL_1]" and w.put("EMAIL", EMAIL2) == "[EMAIL_2]"
    v.put("EMAIL", "zed@x.io")
    v.merge(w)
    assert v.values == {"[EMAIL_1]": EMAIL, "[EMAIL_2]": "zed@x.io", "[EMAIL_3]": EMAIL2}


# ---- restoration ------------------------------------------------------------------------------------
ECHO = f"You wrote {EMAIL}, {PHONE} and {EMAIL}."


def _splits(s: str, parts: int):
    for cuts in itertools.combinations(range(1, len(s)), parts - 1):
        b = [0, *cuts, len(s)]
        yield [s[b[i]:b[i + 1]] for i in range(parts)]


def test_every_two_and_three_part_split_of_the_echo_is_restored_byte_for_byte():
    pol = _policy()
    masked = Masking.start(pol).text(ECHO)
    assert masked == "You wrote [EMAIL_1], [PHONE_1] and [EMAIL_1]."
    n = 0
    for parts in (2, 3):
        for deltas in _splits(masked, parts):
            text, res, seen = _run(pol, ECHO, deltas)
            assert text == ECHO == res.text, deltas
            assert EMAIL not in seen.messages[0]["content"] and PHONE not in seen.messages[0]["content"]
            n += 1
    assert n == (len(masked) - 1) * len(masked) // 2  # every 2-part and 3-part split


def test_only_a_possible_placeholder_is_held_back():
    assert partial_at("abc [EMA") == 4 and partial_at("abc [EMAIL_1] x") is None and partial_at("a [b]c") is None
    m = Masking.start(_policy())
    m.text(EMAIL)
    r = m.restorer(None)
    assert r.feed("Hello [") == "Hello " and r.feed("EMAIL_") == "" and r.feed("1] ok") == f"{EMAIL} ok"
    assert r.feed("[1] and [x") == "[1] and " and r.flush() == "[x"


@pytest.mark.parametrize("copy, out", [("[EMAIL1]", EMAIL), ("[Email_1]", EMAIL), ("[ email 1 ]", EMAIL),
                                       ("[EMAIL_2]", EMAIL2), ("[EMAIL]", "[EMAIL]"), ("[EMAIL_9]", "[EMAIL]"),
                                       ("[PHONE]", "[PHONE]"), ("[phone_01]", PHONE), ("[SSN_1]", "[SSN_1]"),
                                       ("[1]", "[1]")])
def test_a_mangled_placeholder_is_restored_when_unambiguous_else_neutral(copy, out):
    m = Masking.start(MASK)
    m.text(f"{EMAIL} {EMAIL2} {PHONE}")
    r = m.restorer(None)
    assert r.feed(f"a {copy} b") + r.flush() == f"a {out} b"


def test_values_inside_a_tool_call_are_json_escaped():
    pol = _policy("rules:\n  - id: acct\n    forbid: {regex: ['ACCT:[^ ]+']}\n    action: redact\n", "[acct]")
    from ingate.structure import from_tools

    tools = from_tools([{"type": "function", "function": {"name": "look", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}], "auto")
    value = 'ACCT:a"b\\c'
    answer = '<tool_call>{"name": "look", "arguments": {"id": "[ACCT_1]"}}'
    for deltas in _splits(answer, 2):
        text, res, _ = _run(pol, f"look up {value} please", deltas, structure=tools)
        assert json.loads(text[len("<tool_call>"):])["arguments"]["id"] == value, deltas


def test_echoes_come_back_while_values_the_model_invented_are_governed_by_the_output_rules():
    masked = Masking.start(MASK).text(f"I am {EMAIL}")
    assert masked == "I am [EMAIL_1]"
    for deltas in _splits("Reply to [EMAIL_1], not to evil@attacker.io or 212-555-0199.", 2):
        text, res, _ = _run(MASK, f"I am {EMAIL}", deltas)
        assert text == f"Reply to {EMAIL}, not to [EMAIL] or [PHONE].", deltas
        assert [d.action for d in res.decisions] == ["redact", "redact"]


@pytest.mark.parametrize("answer, out", [("keep", "Hi [EMAIL_1]."), ("redact", "Hi [EMAIL]."),
                                         ("restore", f"Hi {EMAIL}.")])
def test_the_policy_chooses_what_the_answers_placeholders_become(answer, out):
    pol = policy(f"version: 1\nname: m\nmask_upstream: {{values: [email], answer: {answer}}}\n")
    assert _run(pol, f"I am {EMAIL}", ["Hi [EMA", "IL_1]."])[0] == out


def test_the_audit_and_the_report_hold_counts_and_keyed_digests_never_a_value(tmp_path):
    pol = policy("version: 1\nname: m\naudit: {store_text: true}\nmask_upstream: [email, phone]\n")
    audit = SqliteAudit(tmp_path / "a.sqlite3")
    text, res, _ = _run(pol, TEXT, ["ok [EMAIL_2]"], audit=audit)
    assert text == f"ok {EMAIL2}"
    rows = [r for r in audit.export() if r["kind"] == "decision"]
    assert sorted(r["detail"].split(" (")[0] for r in rows) == [
        "masked a email value as [EMAIL_1]", "masked a email value as [EMAIL_2]", "masked a phone value as [PHONE_1]"]
    assert all(r["matched_text"] is None and r["digest_kind"].startswith("hmac-sha256:") for r in rows)
    assert [r["action"] for r in audit.find(EMAIL)] == ["mask"]
    dump = json.dumps(rows) + json.dumps(governance(pol, res, "full"))
    assert governance(pol, res, "full")["masked"] == {"email": 3, "phone": 1}
    for v in (EMAIL, EMAIL2, PHONE):
        assert v not in dump
    audit.close()


def test_the_stop_sequences_and_a_raw_prompt_are_masked_too():
    pol = _policy()
    seen = _run(pol, "x", ["a"])[2]
    m = Masking.start(pol)
    assert m.messages(f"complete: {EMAIL}") == "complete: [EMAIL_1]"
    out: list[str] = []
    d = _Drive(["Write to [EMAIL_1] now"])
    req = Request(user(f"stop at {EMAIL}"), pol, gen_params(64), stop=(f"to {EMAIL}",))
    res = govern(req, None, d, Sinks(on_text=out.append))
    assert d.seen.stop == ("to [EMAIL_1]",) and "".join(out) == "Write " and res.finish_reason == "stop"
    assert seen is not None


# ---- the embedded engine ------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_embedded_model_never_sees_a_masked_value_and_its_copies_are_restored(runtime):
    from conftest import PII_PROMPT, SEARCH
    from ingate.policy import NONE_POLICY

    keep = policy("version: 1\nname: keep\nmask_upstream: {values: [email, phone], answer: keep}\n")
    restore = policy("version: 1\nname: restore\nmask_upstream: [email, phone]\n")
    echoed = copied = 0
    for temperature, seed in SEARCH[:4]:
        p = gen_params(32, temperature, seed)
        plain = runtime.run(user(PII_PROMPT), NONE_POLICY, p).text
        echoed += "john.smith@example.com" in plain or "415-555-0132" in plain
        own = runtime.run(user(PII_PROMPT), keep, p)  # the model's own text: placeholders unrestored
        assert "john.smith@example.com" not in own.text and "415-555-0132" not in own.text
        assert own.masked == {"email": 1, "phone": 1}
        if "[EMAIL_1]" in own.text or "[PHONE_1]" in own.text:
            copied += 1
            back = runtime.run(user(PII_PROMPT), restore, p).text  # the same text (no rule fires), restored
            m = Masking.start(restore)
            m.messages(user(PII_PROMPT))
            r = m.restorer(None)
            assert back == r.feed(own.text) + r.flush() != own.text, (own.text, back)
    assert echoed, "the ungoverned model never repeated a value: the prompt tests nothing"
    assert copied, "the model never copied the placeholder: nothing was restored"


# ---- session vaults -------------------------------------------------------------------------------------
def test_a_redis_vault_is_encrypted_at_rest_merged_on_save_and_useless_under_another_key():
    import redis

    from ingate.store.sessions import StoreError
    from ingate.store.vaults import Cipher, RedisVaults

    url, prefix = "redis://127.0.0.1:6379/0", f"test-vault-{__import__('uuid').uuid4().hex[:8]}"
    store = RedisVaults(url, Cipher(b"k" * 32), prefix, ttl=30)
    v = Vault()
    v.put("EMAIL", EMAIL)
    store.save("s", v)
    w = Vault()
    w.put("EMAIL", EMAIL2)  # another replica's request, in flight at the same time
    store.save("s", w)
    got = store.load("s")
    assert got is not None and got.values == {"[EMAIL_1]": EMAIL, "[EMAIL_2]": EMAIL2}
    r = redis.Redis.from_url(url)
    raw = r.get(store.key("s"))
    assert raw and EMAIL.encode() not in raw and EMAIL2.encode() not in raw and 0 < r.ttl(store.key("s")) <= 30
    with pytest.raises(StoreError, match="does not decrypt"):
        RedisVaults(url, Cipher(b"x" * 32), prefix).load("s")
    r.rename(store.key("s"), store.key("t"))  # a vault moved under another session's key does not open
    with pytest.raises(StoreError, match="does not decrypt"):
        store.load("t")
    r.delete(store.key("t"))
    assert store.load("s") is None
