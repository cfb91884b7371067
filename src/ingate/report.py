"""What a client may see of governance: the `governance` report beside the text.

Two levels. `minimal`, the default, gives each decision its rule id, action, position and a
generic sentence ("prevented a match of rule codename", "redacted one email"). It never carries
the phrase, the pattern, the matched text, a score or any hash of them: a ban list is often
exactly what must not leak, and a plain hash of a short value (a phone number, an SSN) is the
value to anyone who can enumerate the candidates. `full`, for trusted clients (per API key or by
server flag), adds the internal detail the audit keeps, and the matched text when the policy keeps
text (`audit: {store_text: true}`). Neither level carries a digest: digests are for the audit,
keyed with the deployment's secret (ingate.audit).
"""

from __future__ import annotations

from ingate.gate.decision import Decision
from ingate.loop import Result
from ingate.policy import Policy

LEVELS = ("minimal", "full")


def public_detail(d: Decision) -> str:
    """A sentence about `d` that discloses nothing the gate withheld."""
    if d.public:
        return d.public
    rule = d.rule_id
    if d.action == "error":
        return ("the engine failed; the stream ended" if rule == "engine"
                else "a check failed; the stream ended and nothing more was released")
    return {
        "prevent": f"prevented a match of rule {rule}",
        "redact": f"redacted a match of rule {rule}",
        "stop": f"ended the stream under rule {rule}",
        "resample": f"withheld a passage under rule {rule} and generated it again",
        "refuse": ("refused: this session has reached its limit of violations" if rule == "session"
                   else f"refused the request under rule {rule}"),
        "abstain": f"ended at a sentence end: the entropy budget of rule {rule} is spent",
        "cancel": "the client went away; generation cancelled",
    }.get(d.action, f"{d.action} under rule {rule}")


def decision(d: Decision, level: str, store_text: bool) -> dict:
    out = {"rule": d.rule_id, "action": d.action, "token_index": d.token_index, "byte_offset": d.byte_offset,
           "detail": public_detail(d)}
    if level == "full":
        out["internal_detail"] = d.detail
        if store_text and d.matched:
            out["matched"] = d.matched.decode("utf-8", errors="replace")
    return out


def governance(policy: Policy, res: Result, level: str, session: dict | None = None) -> dict:
    """The report for one response. `session`: the session's public state, when there is one."""
    s = res.stats()
    out = {"policy": policy.name, "decisions": [decision(d, level, policy.store_text) for d in res.decisions],
           "rollbacks": res.rollbacks, "held_max_chars": res.held_max_chars, "gate_us_p50": s["gate_us_p50"]}
    if res.semantic is not None:
        sem = dict(res.semantic)
        if level != "full":
            sem.pop("max_score", None)  # how near a released group came to a concept: an oracle for probing it
        out["semantic"] = sem
    if res.entropy_summary is not None:
        out["entropy"] = dict(res.entropy_summary)
        if res.entropy_released is not None:  # per token, aligned with logprobs.content
            out["entropy"]["tokens"] = [h for _, h in res.entropy_released]
    if session is not None:
        out["session"] = session
    return out
