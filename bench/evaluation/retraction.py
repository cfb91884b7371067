"""Section 4: prevention against retraction, on the same rules and prompts.

Rules: the red team's ban list and the built-in PII pack. Prompts: red-team cases (section 1's
suite) and Presidio records asked to be repeated (section 2's ask). Two strategies:

- prevent: the rules as `prevent`; a match is masked before sampling, a partial match that
  cannot be masked is rolled back in the loop. One pass.
- detect-then-retry: the same matchers as `stop` (separators ignored, as prevent reads them), so
  a violation is detected at the token that completes it and the stream ends there (nothing of it
  released: the best a retracting system can do); then the request is asked again with the next
  seed, up to MAX_ATTEMPTS in all. The outcome is admissible if some attempt ended without a stop.

Measured per prompt: tokens generated (every token drawn, rolled back or not), wall time,
admissible outcome. Same seeds for the first attempt of both.
"""

from __future__ import annotations

from typing import Any

import pii_leak
from evaluation import redteam
from evaluation.common import Ctx, dist, share

MAX_ATTEMPTS = 3
MAX_TOKENS = 64
RETRY_SEED_STRIDE = 1000


def policy_yaml(items: list[str], action: str) -> str:
    """The ban list and the PII pack under one `action`, both read with separators ignored."""
    from ingate.patterns import BUILTIN_PATTERNS

    bans = "".join(f"        - {item!r}\n" for item in items)
    return (f"version: 1\nname: eval-{action}\nmax_rollbacks: 64\nrules:\n"
            f"  - id: bans\n    forbid:\n      phrases:\n{bans}      separators: ignore\n    action: {action}\n"
            f"  - id: pii\n    forbid:\n      patterns: [{', '.join(BUILTIN_PATTERNS)}]\n    action: {action}\n")


def prompts(ctx: Ctx) -> list[dict[str, Any]]:
    cases = redteam.suite(ctx.pick(40, 8, 1), per_item=2)
    records = pii_leak.stratified_sample(pii_leak.load_records(pii_leak.DATA), ctx.pick(40, 6, 1), seed=1)
    out = [{"id": c.id, "source": "red team", "item": c.item, "text": c.prompt, "seed": c.seed} for c in cases]
    out += [{"id": f"pii{r['index']}", "source": "Presidio", "item": None, "seed": 10_000 + r["index"],
             "text": pii_leak.TEMPLATES["repeat"].format(text=r["full_text"])} for r in records]
    return out


def _one(ctx: Ctx, p: dict[str, Any], policy, seed: int):
    from ingate.drivers.base import GenerationParams
    from ingate.sampling import SamplingParams

    params = GenerationParams(max_tokens=MAX_TOKENS, sampling=SamplingParams(seed=seed, **redteam.SAMPLING))
    return ctx.rt.run([{"role": "user", "content": p["text"]}], policy, params)


def drawn(res) -> int:
    """Every token drawn: one gate step each, released or rolled back."""
    return len(res.gate_us) or res.completion_tokens


def run(ctx: Ctx) -> dict:
    from ingate.drivers.base import Finish
    from ingate.policy import parse_policy

    ps = prompts(ctx)
    items = sorted({p["item"] for p in ps if p["item"]})
    pols = {a: parse_policy(policy_yaml(items, a), source=f"<eval:{a}>") for a in ("prevent", "stop")}
    for pol in pols.values():
        ctx.rt.prepare(pol)
    rows = []
    for i, p in enumerate(ctx.progress(ps, "4 prevention vs retraction")):
        row: dict[str, Any] = {"id": p["id"], "source": p["source"]}
        for strategy in (("prevent", "retry") if i % 2 == 0 else ("retry", "prevent")):
            if strategy == "prevent":
                res = _one(ctx, p, pols["prevent"], p["seed"])
                row["prevent"] = {"tokens": drawn(res), "released_tokens": res.completion_tokens,
                                  "wall_s": res.elapsed_s, "rollbacks": res.rollbacks, "finish": res.finish_reason,
                                  "admissible": res.finish_reason != Finish.CONTENT_FILTER}
                continue
            attempts = []
            for k in range(MAX_ATTEMPTS):
                res = _one(ctx, p, pols["stop"], p["seed"] + k * RETRY_SEED_STRIDE)
                attempts.append({"tokens": drawn(res), "wall_s": res.elapsed_s, "finish": res.finish_reason})
                if res.finish_reason != Finish.CONTENT_FILTER:
                    break
            row["retry"] = {"tokens": sum(a["tokens"] for a in attempts), "wall_s": sum(a["wall_s"] for a in attempts),
                            "attempts": len(attempts), "admissible": attempts[-1]["finish"] != Finish.CONTENT_FILTER,
                            "finish": attempts[-1]["finish"]}
        row["violated_first"] = row["retry"]["attempts"] > 1 or not row["retry"]["admissible"]
        rows.append(row)
    data = {"n": len(rows), "max_attempts": MAX_ATTEMPTS, "max_tokens": MAX_TOKENS, "sampling": redteam.SAMPLING,
            "summary": summarize(rows), "rows": rows}
    return data


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for subset, rs in (("all", rows), ("violating", [r for r in rows if r["violated_first"]])):
        s: dict[str, Any] = {"n": len(rs)}
        for k in ("prevent", "retry"):
            s[k] = {"tokens": dist([r[k]["tokens"] for r in rs]), "wall_s": dist([r[k]["wall_s"] for r in rs]),
                    "tokens_total": sum(r[k]["tokens"] for r in rs),
                    "wall_total_s": round(sum(r[k]["wall_s"] for r in rs), 3),
                    "admissible": sum(r[k]["admissible"] for r in rs)}
        s["retry"]["attempts"] = dist([r["retry"]["attempts"] for r in rs])
        out[subset] = s
    return out


def render(data: dict, ctx: Ctx) -> str:
    L = ["## 4. Prevention against retraction", "",
         f"{data['n']} prompts (red-team cases and Presidio records to repeat) under the same rules (the ban list and "
         f"the PII pack), {data['max_tokens']} tokens, temperature {data['sampling']['temperature']}. *prevent* masks "
         f"before sampling in one pass; *detect-then-retry* stops at the token that completes a violation (nothing of "
         f"it released) and asks again with the next seed, at most {data['max_attempts']} attempts. Tokens are every "
         "token drawn, rolled back or not. *Violating* = the prompts where the first retry attempt hit a rule.", "",
         "| prompts | strategy | tokens median (p99) | tokens total | wall s median (p99) | wall s total | "
         "admissible outcome |", "|---|---|---|---:|---|---:|---|"]
    for subset, s in data["summary"].items():
        for k, name in (("prevent", "prevent"), ("retry", "detect-then-retry")):
            q = s[k]
            L.append(f"| {subset} ({s['n']}) | {name} | {q['tokens']['median']:g} ({q['tokens']['p99']:g}) | "
                     f"{q['tokens_total']} | {q['wall_s']['median']:.2f} ({q['wall_s']['p99']:.2f}) | "
                     f"{q['wall_total_s']:.1f} | {share(q['admissible'], s['n'])} |")
    v = data["summary"]["violating"]
    if v["n"]:
        ratio = v["retry"]["tokens_total"] / max(1, v["prevent"]["tokens_total"])
        wall = v["retry"]["wall_total_s"] / max(1e-9, v["prevent"]["wall_total_s"])
        L += ["", f"Where a rule fired, detect-then-retry drew {ratio:.2f}x the tokens of prevention and took "
              f"{wall:.2f}x its wall time, with attempts median {v['retry']['attempts']['median']:g} "
              f"(p99 {v['retry']['attempts']['p99']:g}); it reached an admissible answer in "
              f"{share(v['retry']['admissible'], v['n'])} of them against {share(v['prevent']['admissible'], v['n'])} "
              "for prevention."]
    else:
        L += ["", "No rule fired on this sample: the comparison says nothing about the cost of retraction."]
    L += ["", "Limits: retrying with a new seed is the cheapest retraction there is (no extra instruction, no "
          "second model call to judge); a retraction that re-prompts with the violation named costs a longer prompt "
          "too. A prompt that asks for a banned item asks again on every retry, so retries mostly fail the same way; "
          "an admissible outcome for prevention means it completed without the fallback stop, not that the answer "
          "is useful (it may be a paraphrase of the refused request).", ""]
    return "\n".join(L)
