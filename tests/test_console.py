"""The console's parts that need no model and no browser: who may open it, what its live view and
lab disclose, and how the policy lab judges text. The browser tests (tests/test_console_browser.py)
drive the whole of it against a real server."""

from __future__ import annotations

import os
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import INGATE, policy

TRIAL = """version: 1
name: trial
rules:
  - id: pii
    forbid: {patterns: [email, phone]}
    action: redact
  - id: codename
    forbid: {phrases: [project bluebird]}
    action: prevent
"""


def _server(detail: str = "minimal", policies: dict | None = None):
    return SimpleNamespace(config=SimpleNamespace(policies=policies or {}, governance_detail=detail))


# ---- admin keys ------------------------------------------------------------------------------------

def test_admin_keys_open_the_console_and_nothing_else(tmp_path, monkeypatch):
    from ingate.keys import Keys, KeysError

    only_admin = Keys.from_specs([], None, ["adm-secret"])
    assert not only_admin, "an --admin-key alone must not turn API auth on"
    assert only_admin.lookup("adm-secret") is None and only_admin.lookup_admin("adm-secret") is not None

    monkeypatch.setenv("OPS_KEY", "ops-secret")
    f = tmp_path / "keys.yaml"
    f.write_text("keys:\n  - {id: ops, key_env: OPS_KEY, admin: true}\n  - {id: web, key: web-secret}\n")
    keys = Keys.from_specs(["plain-secret"], f, ["adm-secret"])
    assert keys.lookup("ops-secret").key_id == "ops" and keys.lookup_admin("ops-secret").key_id == "ops"
    assert keys.lookup_admin("web-secret") is None and keys.lookup_admin("plain-secret") is None
    assert keys.admin_by_id("ops") is not None and keys.lookup("adm-secret") is None

    f.write_text("keys:\n  - {id: ops, key: x, admin: yes-please}\n")
    with pytest.raises(KeysError, match=r"key 'ops'\.admin: true or false"):
        Keys.from_specs([], f)
    with pytest.raises(KeysError, match="given twice"):
        Keys.from_specs([], None, ["same", "same"])


@pytest.mark.parametrize("args, says", [
    (["--console", "--api-key", "client"], "needs an admin key: pass --admin-key KEY"),
    (["--admin-key", "adm"], "--admin-key opens the console, which is off: add --console"),
])
def test_serve_refuses_a_console_left_open_or_a_key_that_guards_nothing(args, says):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGATE_")}
    r = subprocess.run([INGATE, "serve", *args], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and says in r.stderr, r.stderr  # before any model loads


def test_the_cookie_is_signed_scoped_to_this_process_and_expires():
    from ingate.console.auth import TOKEN_S, Guard
    from ingate.keys import Keys

    keys = Keys.from_specs([], None, ["adm-secret"])
    guard = Guard(keys)
    grant = keys.lookup_admin("adm-secret")
    token = guard.token(grant)
    assert "adm-secret" not in token and guard.from_token(token) == grant
    kid, exp, sig = token.rsplit(".", 2)
    assert guard.from_token(f"{kid}.{int(exp) + 60}.{sig}") is None  # a longer life is a forgery
    assert guard.from_token(f"{kid}.{exp}.{'0' * 64}") is None
    assert guard.from_token(guard.token(grant, now=time.time() - TOKEN_S - 1)) is None  # expired
    assert Guard(keys).from_token(token) is None  # another process (a restart, a replica): sign in again
    assert guard.from_token("nonsense") is None


@pytest.mark.parametrize("path, action", [("/console", "console/login"), ("/console/", "login"),
                                          ("/console/api/metrics", "../login"),
                                          ("/console/static/vendor/uPlot.min.css", "../../login")])
def test_the_sign_in_form_posts_relative_to_the_page(path, action):
    from ingate.console.auth import _login_action

    assert _login_action(path) == action  # under any prefix a proxy adds


# ---- what the live view discloses ----------------------------------------------------------------

def test_a_live_decision_says_at_minimal_what_a_client_is_told():
    from ingate.console.feed import decision_event

    row = {"id": 7, "ts": 1.0, "request_id": "r1", "policy": "kept", "rule_id": "pii", "action": "redact",
           "token_index": 4, "byte_offset": 12, "matched_digest": "ab" * 32, "digest_kind": "hmac-sha256:x",
           "matched_text": "415-555-0132", "detail": "phone replaced by [PHONE]", "replica": "a"}
    minimal = decision_event(row, "minimal")
    assert minimal["detail"] == "redacted a match of rule pii"
    assert "415" not in repr(minimal) and "PHONE" not in repr(minimal) and "ab" * 8 not in repr(minimal)
    full = decision_event(row, "full")
    assert full["internal_detail"] == row["detail"] and full["matched"] == "415-555-0132"
    assert "ab" * 8 not in repr(full)  # digests are the audit's, never shown


# ---- the policy lab ------------------------------------------------------------------------------

def test_the_lab_judges_each_text_as_the_gate_would():
    from ingate.console import lab
    from ingate.console.traffic import Traffic

    body = lab.SampleBody(policy_yaml=TRIAL, texts=["Fine weather.", "Mail jo@mail.test now.",
                                                    "About Project-Bluebird today", ""])
    out = lab.sample(lab.candidate(_server(), body), body, Traffic())
    assert [r["outcome"] for r in out["rows"]] == ["passes", "redacted", "blocked"]
    assert (out["n"], out["blocked"], out["redacted"], out["passes"]) == (3, 1, 1, 1)
    assert out["rows"][1]["released"] == "Mail [EMAIL] now."
    assert out["rows"][2]["released"] == "About "  # withheld from the match on: nothing can continue it
    assert {(x["rule"], x["action"]) for x in out["by_rule"]} == {("pii", "redact"), ("codename", "prevent")}


def test_the_lab_says_what_to_fix_and_keeps_loaded_policies_to_full_detail():
    from ingate.api.openai import ApiError
    from ingate.console import lab
    from ingate.console.traffic import Traffic

    bad = "version: 1\nname: x\nrules:\n  - id: a\n    forbid: {regex: ['(']}\n    action: prevent\n"
    with pytest.raises(ApiError, match=r"<console>, rule 'a', field forbid\.regex\[0\]") as e:
        lab.candidate(_server(), lab.CheckBody(policy_yaml=bad))
    assert e.value.status == 400 and e.value.param == "policy_yaml"
    loaded = {"secret": policy(TRIAL, "secret.yaml")}
    with pytest.raises(ApiError, match="--governance-detail full") as e:
        lab.candidate(_server("minimal", loaded), lab.CheckBody(policy="secret"))
    assert e.value.status == 403
    assert lab.check(lab.candidate(_server("full", loaded), lab.CheckBody(policy="secret")), "x")["policy"] == "trial"
    with pytest.raises(ApiError, match="store_text"):
        lab.sample(lab.candidate(_server(), lab.SampleBody(policy_yaml=TRIAL)),
                   lab.SampleBody(policy_yaml=TRIAL, source="traffic"), Traffic())


def test_traffic_keeps_released_text_only_of_policies_that_keep_text():
    from ingate.console.traffic import Traffic
    from ingate.drivers.base import Result

    traffic = Traffic(keep=2)
    observe = traffic.observer("m")
    kept, plain = policy("version: 1\nname: k\naudit: {store_text: true}\nrules: []\n"), policy(TRIAL)
    for i, pol in enumerate([kept, plain, kept, kept]):
        observe(SimpleNamespace(policy=pol, request_id=f"r{i}"), Result(text=f"t{i}", finish_reason="stop"))
    assert [s.text for s in traffic.recent(10)] == ["t3", "t2"]  # newest first, bounded
