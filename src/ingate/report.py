"""What a client may see of governance: the `governance` report beside the text.

Two levels. `minimal`, the default, gives each decision its rule id, action, position and a
generic sentence ("prevented a match of rule codename", "redacted one email"). It never carries
the phrase, the pattern, the matched text, a score or any hash of them: a ban list is often
exactly what must not leak, and a plain hash of a short value (a phone number, an SSN) is the
value to anyone who can enumerate the candidates. `full`, for trusted clients (per API key or by
server flag), adds the internal detail the audit keeps, and the matched text when the policy keeps
text (`audit: {store_text: true}`). Neither level carries a digest: digests are for the audit,
keyed with the deployment's secret (ingate.audit).

The operator's own command line (`ingate generate`, `chat`) sees the full report, a one-line
summary on stderr, and with --show-entropy the released text coloured by entropy (`entropy_text`).
"""

from __future__ import annotations

from collections import Counter

from ingate.drivers.base import Result
from ingate.gate.decision import Decision
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
    if res.masked:
        out["masked"] = dict(res.masked)  # counts per type: the values themselves never leave the vault
    if session is not None:
        out["session"] = session
    return out


def result_json(res: Result, store_text: bool) -> dict:
    """`ingate generate --json`: the text, the full report of each decision, entropies and stats."""
    return {"text": res.text, "finish_reason": res.finish_reason,
            "decisions": [decision(d, "full", store_text) for d in res.decisions],
            "entropy": [round(h, 4) if h == h else None for h in (res.entropy or [])],
            "stats": res.stats()}


def summary(res: Result) -> str:
    """'[ingate] finish=stop; decisions: pii redact x2': the line `generate` and `chat` print on stderr."""
    counts = Counter((d.rule_id, d.action) for d in res.decisions)
    acts = ", ".join(f"{r} {a} x{n}" for (r, a), n in counts.items())
    return f"[ingate] finish={res.finish_reason}" + (f"; decisions: {acts}" if acts else "")


# (upper bound in nats, ANSI colour): where the model was sure, unsure, lost
ENTROPY_COLOURS = ((1.0, ""), (2.5, "\033[33m"), (float("inf"), "\033[31m"))
ENTROPY_LEGEND = (f"[ingate] entropy (nats): plain < {ENTROPY_COLOURS[0][0]:g} <= yellow < "
                  f"{ENTROPY_COLOURS[1][0]:g} <= red (NO_COLOR=1: values after uncertain tokens)")


def entropy_text(res: Result, plain: bool) -> str:
    """The released text, each token coloured by the entropy it was sampled at (`plain`: the value
    written after each uncertain token instead). Text that ingate itself added (a refusal or a
    budget message) and placeholders are left plain."""
    parts: list[str] = []
    shown = ""
    for text, h in res.entropy_released or []:
        colour = next(c for hi, c in ENTROPY_COLOURS if h < hi) if h is not None else ""
        if plain:
            parts.append(text + (f"⟨{h:.1f}⟩" if h is not None and h >= ENTROPY_COLOURS[0][0] else ""))
        else:
            parts.append(f"{colour}{text}\033[0m" if colour else text)
        shown += text
    parts.append(res.text[len(shown):] if res.text.startswith(shown) else "")  # a refusal or message
    return "".join(parts)
