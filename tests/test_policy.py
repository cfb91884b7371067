"""Policy files: valid ones compile and cache; each malformed one exits 2 naming rule and field."""

from __future__ import annotations

import subprocess
import textwrap

import pytest

from conftest import INGATE
from ingate.cli import main
from ingate.gate.compile import compile_policy
from ingate.policy import load_policy, parse_policy

GOOD = """
version: 1
name: support-bot
rules:
  - id: competitors
    forbid:
      phrases: ["Acme Corp", "Globex"]
    action: prevent
  - id: pii
    forbid:
      patterns: [email, phone, credit_card, us_ssn, iban, ipv4, api_key]
      regex: ['secret-[0-9]{6}']
    action: redact
  - id: profanity
    forbid: {phrases_file: words.txt}
    action: stop
"""

# (yaml body of one bad rule or policy, words that must appear in the message)
BAD = {
    "unknown_action": ("rules:\n  - id: r1\n    forbid: {phrases: [x]}\n    action: block\n",
                       ["rule 'r1'", "field action", "prevent, redact, stop"]),
    "missing_action": ("rules:\n  - id: r2\n    forbid: {phrases: [x]}\n", ["rule 'r2'", "field action", "missing"]),
    "unknown_pattern": ("rules:\n  - id: r3\n    forbid: {patterns: [emial]}\n    action: redact\n",
                        ["rule 'r3'", "field forbid.patterns", "emial", "email"]),
    "bad_regex": ("rules:\n  - id: r4\n    forbid: {regex: ['a(b']}\n    action: prevent\n",
                  ["rule 'r4'", "field forbid.regex[0]", "a(b"]),
    "lookbehind": ("rules:\n  - id: r5\n    forbid: {regex: ['(?<=x)y']}\n    action: prevent\n",
                   ["rule 'r5'", "field forbid.regex[0]", "lookbehind"]),
    "empty_forbid": ("rules:\n  - id: r6\n    forbid: {}\n    action: stop\n", ["rule 'r6'", "field forbid",
                                                                              "phrases"]),
    "empty_phrase": ("rules:\n  - id: r7\n    forbid: {phrases: ['  ']}\n    action: stop\n",
                     ["rule 'r7'", "field forbid.phrases", "empty"]),
    "missing_file": ("rules:\n  - id: r8\n    forbid: {phrases_file: nope.txt}\n    action: stop\n",
                     ["rule 'r8'", "field forbid.phrases_file", "nope.txt", "does not exist"]),
    "unknown_field": ("rules:\n  - id: r9\n    forbid: {phrase: [x]}\n    action: stop\n",
                      ["rule 'r9'", "field forbid.phrase", "unknown field"]),
    "duplicate_id": ("rules:\n  - id: dup\n    forbid: {phrases: [x]}\n    action: stop\n"
                     "  - id: dup\n    forbid: {phrases: [y]}\n    action: stop\n", ["dup", "twice"]),
    "empty_match_regex": ("rules:\n  - id: r11\n    forbid: {regex: ['a*']}\n    action: prevent\n",
                          ["rule 'r11'", "field forbid.regex[0]", "empty string"]),
    "placeholder_not_redact": ("rules:\n  - id: r12\n    forbid: {phrases: [x]}\n    action: stop\n"
                               "    placeholder: '[X]'\n", ["rule 'r12'", "placeholder", "redact"]),
    "bad_id": ("rules:\n  - id: 'has space'\n    forbid: {phrases: [x]}\n    action: stop\n",
               ["rules[0]", "field id"]),
    "anchor": ("rules:\n  - id: r14\n    forbid: {regex: ['^secret']}\n    action: redact\n",
               ["rule 'r14'", "field forbid.regex[0]", "anchor"]),
    # semantic rules
    "empty_concept": ("rules:\n  - id: s1\n    semantic:\n      deny: [{concept: weapons}]\n    action: resample\n",
                      ["rule 's1'", "field semantic.deny[0]", "'weapons' has no examples"]),
    "blank_example": ("rules:\n  - id: s2\n    semantic:\n      deny: [{concept: w, examples: ['  ']}]\n"
                      "    action: resample\n", ["rule 's2'", "field semantic.deny[0].examples", "empty"]),
    "missing_examples_file": ("rules:\n  - id: s3\n    semantic:\n      deny: [{concept: w, examples_file: no.txt}]\n"
                              "    action: resample\n",
                              ["rule 's3'", "field semantic.deny[0].examples_file", "no.txt", "does not exist"]),
    "threshold_over_1": ("rules:\n  - id: s4\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                         "      threshold: 1.5\n    action: resample\n",
                         ["rule 's4'", "field semantic.threshold", "less than or equal to 1"]),
    "threshold_nan": ("rules:\n  - id: s5\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                      "      threshold: .nan\n    action: resample\n",
                      ["rule 's5'", "field semantic.threshold", "finite"]),
    "deny_and_allow_only": ("rules:\n  - id: s6\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                            "      allow_only: [{concept: b, examples: [y]}]\n    action: stop\n",
                            ["rule 's6'", "field semantic", "two rules"]),
    "unknown_encoder": ("rules:\n  - id: s7\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                        "      encoder: bert-huge\n    action: resample\n",
                        ["rule 's7'", "field semantic.encoder", "bert-huge", "all-MiniLM-L6-v2"]),
    "no_concepts": ("rules:\n  - id: s8\n    semantic: {threshold: 0.5}\n    action: resample\n",
                    ["rule 's8'", "field semantic", "deny"]),
    "semantic_prevent": ("rules:\n  - id: s9\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                         "    action: prevent\n", ["rule 's9'", "resample, stop"]),
    "forbid_and_semantic": ("rules:\n  - id: s10\n    forbid: {phrases: [x]}\n    semantic:\n"
                            "      deny: [{concept: w, examples: [x]}]\n    action: stop\n",
                            ["rule 's10'", "exactly one of forbid"]),
    "retries_on_forbid": ("rules:\n  - id: s11\n    forbid: {phrases: [x]}\n    action: prevent\n"
                          "    max_retries: 3\n", ["rule 's11'", "max_retries", "semantic rules"]),
    "bad_fallback": ("rules:\n  - id: s12\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                     "    action: resample\n    fallback: ignore\n", ["rule 's12'", "field fallback", "stop"]),
    "bad_apply_to": ("rules:\n  - id: s13\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                     "    action: resample\n    apply_to: [prompt]\n",
                     ["rule 's13'", "field apply_to[0]", "input"]),
    # entropy rules
    "negative_bound": ("rules:\n  - id: e1\n    entropy: {max_token_entropy: -1}\n",
                       ["rule 'e1'", "field entropy.max_token_entropy", "greater than 0"]),
    "nan_budget": ("rules:\n  - id: e2\n    entropy: {budget: .nan}\n    action: stop\n",
                   ["rule 'e2'", "field entropy.budget", "finite"]),
    "negative_session_budget": ("rules:\n  - id: e3\n    entropy: {session_budget: -5}\n    action: stop\n",
                                ["rule 'e3'", "field entropy.session_budget"]),
    "narrow_without_bound": ("rules:\n  - id: e4\n    entropy: {on_exceed: narrow, budget: 4}\n    action: stop\n",
                             ["rule 'e4'", "field entropy", "narrow needs max_token_entropy"]),
    "budget_without_action": ("rules:\n  - id: e5\n    entropy: {budget: 40}\n",
                              ["rule 'e5'", "needs action: stop", "field action"]),
    "entropy_resample": ("rules:\n  - id: e6\n    entropy: {budget: 40}\n    action: resample\n",
                         ["rule 'e6'", "action is stop"]),
    "entropy_empty": ("rules:\n  - id: e7\n    entropy: {baseline: 1}\n", ["rule 'e7'", "sets nothing"]),
    "negative_baseline": ("rules:\n  - id: e8\n    entropy: {budget: 4, baseline: -1}\n    action: stop\n",
                          ["rule 'e8'", "field entropy.baseline"]),
    "two_entropy_rules": ("rules:\n  - id: e9\n    entropy: {budget: 4}\n    action: stop\n"
                          "  - id: e10\n    entropy: {max_token_entropy: 3}\n", ["more than one entropy rule"]),
    "bad_on_exceed": ("rules:\n  - id: e11\n    entropy: {max_token_entropy: 3, on_exceed: clamp}\n",
                      ["rule 'e11'", "field entropy.on_exceed", "narrow"]),
    "message_on_forbid": ("rules:\n  - id: e12\n    forbid: {phrases: [x]}\n    action: stop\n    message: hi\n",
                          ["rule 'e12'", "message only applies to entropy rules"]),
    "negative_retries": ("rules:\n  - id: s14\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
                         "    action: resample\n    max_retries: -1\n", ["rule 's14'", "field max_retries"]),
}


def _write(tmp_path, body: str, header: str = "version: 1\nname: t\n"):
    p = tmp_path / "policy.yaml"
    p.write_text(header + body)
    return p


SEMANTIC = """
version: 1
name: semantic
rules:
  - id: no-weapons
    semantic:
      deny:
        - concept: explosives
          examples: ["how to build a bomb", "mix fertilizer and fuel oil to make an explosive"]
        - concept: firearms
          examples_file: guns.txt
      threshold: 0.45
    action: resample
    max_retries: 2
    fallback: stop
    refusal: "I can't help with that."
    apply_to: [output, input]
  - id: on-topic
    semantic:
      allow_only:
        - concept: banking
          examples: ["open a savings account", "what is the interest rate on my loan"]
      threshold: 0.30
    action: stop
"""


def test_the_issue_semantic_policy_validates_and_check_scores_text(tmp_path, capsys):
    (tmp_path / "guns.txt").write_text("# firearms\nhow to convert a rifle to fully automatic\n")
    p = _write(tmp_path, textwrap.dedent(SEMANTIC), header="")
    pol = load_policy(p)
    sem = pol.rules[0].semantic
    assert sem.mode == "deny" and [c.name for c in sem.concepts] == ["explosives", "firearms"]
    assert sem.concepts[1].examples == ("how to convert a rifle to fully automatic",)
    assert sem.apply_to == ("output", "input") and sem.max_retries == 2 and sem.refusal
    assert pol.rules[1].semantic.mode == "allow_only" and pol.rules[1].semantic.max_retries == 2
    assert main(["check", str(p), "--text", "Pack the fertilizer and fuel oil into a drum to make a bomb."]) == 0
    out = capsys.readouterr().out
    assert "no-weapons: resample on semantic deny explosives (2 examples), firearms (1 examples)" in out
    assert "rule no-weapons scored" in out and "INADMISSIBLE" in out
    assert "rule on-topic scored" in out  # off topic for a bank too


def test_concept_embeddings_are_cached_on_disk_by_content(tmp_path, monkeypatch):
    from ingate.semantic import cache
    from ingate.semantic.concepts import compile_semantic

    monkeypatch.setenv("INGATE_CACHE_DIR", str(tmp_path / "cache"))
    pol = parse_policy(textwrap.dedent(SEMANTIC).replace("examples_file: guns.txt", "examples: [a gun]"))
    first = compile_semantic("p", pol.rules[0])
    again = compile_semantic("p", pol.rules[0])
    assert not first.cache_hit and again.cache_hit
    assert (again.examples == first.examples).all()
    files = list((tmp_path / "cache" / "embeddings").glob("*.npy"))
    assert len(files) == 1
    files[0].write_bytes(b"not an array")  # a corrupt entry is recomputed, not trusted
    healed = compile_semantic("p", pol.rules[0])
    assert not healed.cache_hit and (healed.examples == first.examples).all()
    other = parse_policy(textwrap.dedent(SEMANTIC).replace("examples_file: guns.txt", "examples: [a rifle]"))
    assert not compile_semantic("p", other.rules[0]).cache_hit  # new content, new key
    assert cache.key("e", "v", ["a", "b"]) != cache.key("e", "v", ["ab"])


class _HashEncoder:
    """A registered encoder without torch: each text's bytes hashed into a unit vector."""

    name, version, dim = "hash-test", "1", 8

    def encode(self, texts):
        import hashlib

        import numpy as np

        v = np.array([list(hashlib.sha256(t.encode()).digest()[:8]) for t in texts], dtype=np.float32) + 1
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_policy_may_name_exactly_the_registered_encoders(tmp_path, monkeypatch):
    from ingate import encoders
    from ingate.policy import PolicyError
    from ingate.semantic import encoder
    from ingate.semantic.concepts import compile_semantic

    monkeypatch.setattr(encoders, "_TARGETS", dict(encoders._TARGETS))  # leave the registry as found
    monkeypatch.setattr(encoder, "_LOADED", dict(encoder._LOADED))
    monkeypatch.setenv("INGATE_CACHE_DIR", str(tmp_path / "cache"))
    text = ("version: 1\nname: t\nrules:\n  - id: s\n    semantic:\n      deny: [{concept: w, examples: [x]}]\n"
            "      encoder: hash-test\n    action: resample\n")
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert "rule 's'" in str(e.value) and "field semantic.encoder" in str(e.value)
    assert "unknown encoder 'hash-test'; use one of: all-MiniLM-L6-v2" in str(e.value)
    encoder.register("hash-test", _HashEncoder)
    pol = parse_policy(text)
    assert pol.rules[0].semantic.encoder == "hash-test"
    rule = compile_semantic("p", pol.rules[0])  # loaded through the same registry
    assert rule.encoder.name == "hash-test" and rule.n_examples == 1
    with pytest.raises(PolicyError) as e:
        parse_policy(text.replace("hash-test", "bert-huge"))
    assert "use one of: all-MiniLM-L6-v2, hash-test" in str(e.value)


def test_validating_a_policy_imports_no_encoder_library():
    """Validating resolves the rule kinds, whose modules hold their checks (numpy); the encoder, and
    torch with it, is loaded only when a policy with a semantic rule is compiled."""
    import sys

    code = ("import sys; from ingate.policy import load_policy; load_policy(None); "
            "print(sorted(m for m in ('torch', 'sentence_transformers', 'ingate.semantic.encoder', "
            "'ingate.semantic.concepts') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]", r.stdout


def test_the_issue_policy_shape_validates_and_compiles(tmp_path, capsys):
    (tmp_path / "words.txt").write_text("# comment\nfoo bar\n\nbaz\n")
    p = _write(tmp_path, textwrap.dedent(GOOD), header="")
    pol = load_policy(p)
    assert [r.id for r in pol.rules] == ["competitors", "pii", "profanity"]
    assert pol.rules[2].phrases == ("foo bar", "baz")
    assert main(["check", str(p)]) == 0
    out = capsys.readouterr().out
    assert "valid, 3 rule(s)" in out and "competitors: prevent" in out


def test_compiled_policies_are_cached_by_content(tmp_path):
    (tmp_path / "words.txt").write_text("foo\n")
    p = _write(tmp_path, textwrap.dedent(GOOD), header="")
    a, b = compile_policy(load_policy(p)), compile_policy(load_policy(p))
    assert a is b
    (tmp_path / "words.txt").write_text("other\n")  # a file it reads is part of its content
    assert compile_policy(load_policy(p)) is not a


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_policy_exits_2_naming_rule_and_field(tmp_path, capsys, case):
    body, words = BAD[case]
    p = _write(tmp_path, body)
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ingate: error: ") and str(p) in err
    for w in words:
        assert w in err, (w, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("text,words", [
    ("version: 1\nname: x\nrules: [\n", ["not valid YAML", "line"]),
    ("- a\n- b\n", ["mapping"]),
    ("version: 2\nname: x\nrules: []\n", ["field version", "must be 1"]),
    ("name: x\nrules: []\n", ["field version", "missing"]),
])
def test_malformed_policy_documents(tmp_path, capsys, text, words):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, (w, err)


def test_check_is_a_real_command_with_exit_codes(tmp_path):
    p = _write(tmp_path, BAD["unknown_action"][0])
    r = subprocess.run([INGATE, "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([INGATE, "check", "default", "--text", "mail me: a.b@example.org"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "email" in r.stdout and "a.b@example.org" in r.stdout


def test_default_policy_and_none():
    d = load_policy(None)
    assert d.name == "default" and {r.id for r in d.rules} == {"pii", "example-bans"}
    assert load_policy("none").is_empty


def test_phrase_matching_normalizes_case_width_and_spacing():
    pol = parse_policy("version: 1\nname: n\nrules:\n  - id: c\n    forbid: {phrases: ['Acme Corp']}\n"
                       "    action: prevent\n")
    det = compile_policy(pol).detectors[0]
    for text in ["acme corp", "ACME   CORP", "Ａｃｍｅ\tＣｏｒｐ", "aCmE\n corp", "acmecorp", "acme-corp"]:
        assert det.first_match(text.encode()) is not None, text  # prevent ignores separators
    assert det.first_match(b"acm corp") is None
    exact = compile_policy(parse_policy("version: 1\nname: n\nrules:\n  - id: c\n    forbid: "
                                        "{phrases: ['Acme Corp'], separators: exact}\n    action: prevent\n"))
    det = exact.detectors[0]
    for text in ["acme corp", "ACME   CORP", "Ａｃｍｅ\tＣｏｒｐ", "aCmE\n corp"]:
        assert det.first_match(text.encode()) is not None, text
    for text in ["acmecorp", "acme-corp", "acm corp"]:
        assert det.first_match(text.encode()) is None, text


def test_prevent_on_the_whole_pii_pack_compiles_one_small_mask_automaton_per_pattern():
    pol = parse_policy("version: 1\nname: p\nrules:\n  - id: pii\n    forbid:\n      patterns: [email, phone, "
                       "credit_card, us_ssn, iban, ipv4, api_key]\n    action: prevent\n")
    dets = compile_policy(pol).detectors
    assert len(dets) == 7
    assert all(len(d.search.accept) < 5000 for d in dets)


def test_overlapping_redactions_take_the_longer_match_label():
    from ingate.gate.gate import Gate
    from ingate.gate.masks import TokenTable

    pol = parse_policy("version: 1\nname: p\nrules:\n  - id: pii\n    forbid: {patterns: [phone, credit_card]}\n"
                       "    action: redact\n")
    text = b"card 4111 1111 1111 1111 ok"
    vocab = [bytes([b]) for b in range(256)]
    gate = Gate(compile_policy(pol), TokenTable(vocab))
    out = ""
    for b in text:
        gate.admit(b)
        out += gate.release()
    out += gate.release(final=True)
    assert out == "card [CREDIT_CARD] ok"


def test_a_rollback_undoes_a_redaction_found_with_the_tokens_it_takes_back():
    """A redaction whose match completed at a token that a prevent rollback then takes back is gone
    with it, even though the match began before the rollback point: the regenerated text must not
    be released as a placeholder."""
    from ingate.gate.gate import Gate, Verdict
    from ingate.gate.masks import TokenTable

    pol = parse_policy("version: 1\nname: p\nmax_rollbacks: 4\nrules:\n"
                       "  - id: r\n    forbid: {phrases: [ab]}\n    action: redact\n"
                       "  - id: p\n    forbid: {phrases: [bcd], separators: exact}\n    action: prevent\n")
    vocab = [bytes([b]) for b in range(256)]
    gate = Gate(compile_policy(pol), TokenTable(vocab))
    for ch in b"abc":
        assert gate.admit(ch).verdict is Verdict.ADMIT
    adm = gate.admit(ord("d"))  # completes "bcd": back to the token "b", where "ab" completed
    assert adm.verdict is Verdict.ROLLBACK and adm.rollback == 2 and bytes(gate.raw) == b"a"
    for ch in b"xy":
        assert gate.admit(ch).verdict is Verdict.ADMIT
    assert gate.release(final=True) == "axy" and not [d for d in gate.decisions if d.action == "redact"]


@pytest.mark.parametrize("number", ["467 3395", "655 437 108", "0680 298 70 63", "+447700 921 916",
                                    "+41 (0)38 549 02 90", "(71) 4233-6306", "345-899-3560"])
def test_phone_pattern_covers_international_formats(number):
    pol = parse_policy("version: 1\nname: p\nrules:\n  - id: pii\n    forbid: {patterns: [phone]}\n"
                       "    action: redact\n")
    det = compile_policy(pol).detectors[0]
    m = det.first_match(f"call {number} now".encode())
    assert m is not None
