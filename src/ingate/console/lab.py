"""The policy lab: a policy tried on text before it governs anything.

`check` is `ingate check POLICY --text TEXT` in the browser: the same report, line for line
(`ingate.gate.explain`: which rule, which fold or mode matched, and where). `sample` runs the
policy's gate over many texts, each as a remote stream that can never be continued: a match the
policy prevents or stops withholds the text from there (blocked), a redaction replaces a span
(redacted), and the rest passes as it is. The texts are a pasted list, or a sample of recent
traffic (`ingate.console.traffic`: released text of policies that keep text).

A pasted or uploaded policy is compiled for the request and dropped (files it names are read
relative to the server's working directory). A policy the server loaded can be tried only where
the server shows full governance detail: its report names what its rules look for, which a
client of a `minimal` server is never told.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ingate import report
from ingate.api.openai import ApiError
from ingate.console.traffic import Traffic
from ingate.drivers.text import govern_text
from ingate.gate.compile import CompiledPolicy, compile_policy
from ingate.gate.explain import policy_report, text_report
from ingate.gate.gate import Gate, GateOptions, Mode
from ingate.policy import Policy, PolicyError, parse_policy

MAX_TEXTS = 500
BLOCKING = frozenset({"prevent", "resample", "stop", "refuse", "abstain", "error"})


class _Candidate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    policy: str | None = None  # a loaded policy's name
    policy_yaml: str | None = None  # or a policy's text (pasted or uploaded)


class CheckBody(_Candidate):
    text: str = ""


class SampleBody(_Candidate):
    source: Literal["traffic", "list"] = "list"
    texts: list[str] = Field(default_factory=list, max_length=MAX_TEXTS)
    n: int = Field(default=200, ge=1, le=MAX_TEXTS)  # traffic: how many of the newest responses


def candidate(server, body: _Candidate) -> CompiledPolicy:
    """The policy to try, compiled; a 400 that says what to fix."""
    if (body.policy is None) == (body.policy_yaml is None):
        raise ApiError(400, "give either policy (the name of a loaded policy) or policy_yaml (a policy's YAML)",
                       "policy")
    if body.policy is not None:
        policies = server.config.policies
        if body.policy not in policies:
            raise ApiError(400, f"unknown policy {body.policy!r}; loaded: {', '.join(policies)}", "policy",
                           "unknown_policy")
        if server.config.governance_detail != "full":
            raise ApiError(403, "a loaded policy's report names what its rules look for, which this server shows "
                                "no client (--governance-detail minimal): paste its YAML instead, or start the server "
                                "with --governance-detail full", "policy", "needs_full_detail",
                           type_="permission_error")
        return compile_policy(policies[body.policy])
    try:
        return CompiledPolicy(_parse(body.policy_yaml or ""))
    except PolicyError as e:
        raise ApiError(400, str(e), "policy_yaml", "invalid_policy") from None


def _parse(text: str) -> Policy:
    if not text.strip():
        raise PolicyError(["<console>: the policy is empty; paste a policy's YAML (version: 1, name, rules)"])
    return parse_policy(text, source="<console>", base=Path.cwd())


def check(compiled: CompiledPolicy, text: str) -> dict:
    """`ingate check --text`: the policy's report, then what it matches in `text`."""
    lines = policy_report(compiled)
    matches = text_report(compiled, text) if text else []
    return {"policy": compiled.policy.name, "lines": lines + matches, "matches": len(
        [m for m in matches if m.lstrip().startswith("match:")])}


def judge(compiled: CompiledPolicy, text: str) -> dict:
    """What the policy's gate does to `text` as a stream that cannot be continued."""
    gate = Gate(compiled, None, GateOptions(), mode=Mode.TEXT)
    res = govern_text(gate, lambda _so_far, attempt: iter([text] if attempt == 0 else []))
    actions = {d.action for d in res.decisions}
    outcome = ("blocked" if res.finish_reason == "content_filter" or actions & BLOCKING
               else "redacted" if "redact" in actions else "passes")
    return {"outcome": outcome, "released": res.text, "finish_reason": res.finish_reason,
            "decisions": [report.decision(d, "full", False) for d in res.decisions]}


def sample(compiled: CompiledPolicy, body: SampleBody, traffic: Traffic) -> dict:
    """The policy over many texts: how many it would block, redact or pass, and by which rule."""
    if body.source == "traffic":
        items = [(s.text, f"{s.model} · {s.policy} · {s.request_id[:12]}") for s in traffic.recent(body.n)]
        if not items:
            raise ApiError(400, "no recent traffic is kept: only responses of policies with audit: {store_text: true} "
                                "are sampled; paste a list of texts instead", "source", "no_traffic")
    else:
        items = [(t, f"line {i + 1}") for i, t in enumerate(body.texts) if t.strip()]
        if not items:
            raise ApiError(400, "texts: paste at least one text (one per line)", "texts")
    rows = [{"text": t, "from": where} | judge(compiled, t) for t, where in items]
    outcomes = Counter(r["outcome"] for r in rows)
    by_rule = Counter((d["rule"], d["action"]) for r in rows for d in r["decisions"])
    return {"policy": compiled.policy.name, "n": len(rows), "blocked": outcomes["blocked"],
            "redacted": outcomes["redacted"], "passes": outcomes["passes"],
            "by_rule": [{"rule": r, "action": a, "n": n} for (r, a), n in by_rule.most_common()], "rows": rows}
