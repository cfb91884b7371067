"""Governed against ungoverned decode throughput, gate time per token, and hold-back.

Everything is measured side by side in one process and one run: for each prompt, the same seed
is run ungoverned (`policy: none`), under the default policy and under 1,000 banned phrases, in
a rotating order so that drift on this shared machine hits every configuration alike. Ratios are
per prompt (governed tokens/s over ungoverned tokens/s); we quote their median and the p1/p99.

    .venv/bin/python bench/run.py [--prompts N] [--tokens 128] [--long 1024] [--quick]

Writes bench/results/throughput.json and bench/results/summary.md (quoted by docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from ingate.drivers.base import GenerationParams, Result
from ingate.drivers.full import generate
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate
from ingate.policy import load_policy, parse_policy
from ingate.runtime import Runtime
from ingate.sampling import SamplingParams

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

SYL = ["ka", "lo", "mir", "zen", "tor", "vex", "qua", "ri", "dan", "sol", "bri", "ux", "pha", "nor", "gle",
       "tri", "os", "vel", "cor", "imb"]
SUFFIX = ["Corp", "Holdings", "Labs", "Group", "Systems", "Partners", "Dynamics", "Foods", "Media", "Bank"]


def thousand_phrases(n: int = 1000, seed: int = 7) -> list[str]:
    """Made-up two-word company names: realistic ban-list entries that a normal answer never hits."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        name = "".join(rng.choice(SYL) for _ in range(rng.randint(2, 3))).capitalize()
        out.add(f"{name} {rng.choice(SUFFIX)}")
    return sorted(out)


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else float("nan")


def summarize_ratio(rs: list[float]) -> dict:
    return {"median": round(pct(rs, 50), 4), "p1": round(pct(rs, 1), 4), "p99": round(pct(rs, 99), 4),
            "min": round(min(rs), 4), "max": round(max(rs), 4)}


def run_one(rt: Runtime, prompt: list[int], policy, params: GenerationParams) -> Result:
    gate = None if policy is None else Gate(compile_policy(policy), rt.table)
    return generate(rt.engine, prompt, params, gate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--long", type=int, default=1024, help="output length for the flatness run")
    ap.add_argument("--quick", action="store_true", help="4 prompts x 32 tokens, long run 256: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.tokens, args.long = 4, 32, 256

    prompts = [ln.strip() for ln in (HERE / "prompts.txt").read_text().splitlines() if ln.strip()]
    prompts = (prompts * (args.prompts // len(prompts) + 1))[: args.prompts]
    rt = Runtime.load(use_audit=False)
    phrases = thousand_phrases()
    big = parse_policy("version: 1\nname: thousand-phrases\nrules:\n  - id: bans\n    forbid:\n      phrases:\n"
                       + "".join(f"        - {json.dumps(p)}\n" for p in phrases) + "    action: prevent\n",
                       source="<bench:1000-phrases>")
    t = time.perf_counter()
    compile_policy(big)
    compile_1000_s = time.perf_counter() - t
    configs = {"ungoverned": None, "default": load_policy(None), "1000_phrases": big}
    for p in configs.values():
        if p is not None:
            compile_policy(p)

    print(f"bench: {len(prompts)} prompts x {args.tokens} tokens, configs {list(configs)}", file=sys.stderr)
    per: dict[str, list[Result]] = {k: [] for k in configs}
    names = list(configs)
    run_one(rt, rt.engine.chat_prompt([{"role": "user", "content": "warm up"}]), None,
            GenerationParams(max_tokens=16))
    for i, text in enumerate(prompts):
        prompt = rt.engine.chat_prompt([{"role": "user", "content": text}])
        params = GenerationParams(max_tokens=args.tokens, ignore_eos=True,
                                  sampling=SamplingParams(temperature=0.8, top_p=0.95, seed=i))
        order = names[i % 3:] + names[: i % 3]
        for name in order:
            per[name].append(run_one(rt, prompt, configs[name], params))
        base = per["ungoverned"][-1]
        print(f"  [{i + 1}/{len(prompts)}] " + "  ".join(
            f"{n}={per[n][-1].completion_tokens / per[n][-1].elapsed_s:.1f} tok/s" for n in names)
            + ("" if per["default"][-1].text == base.text else "  (default policy acted)"), file=sys.stderr)

    out: dict = {"machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count(),
                             "platform": platform.platform()},
                 "model": rt.engine.name, "prompts": len(prompts), "tokens": args.tokens,
                 "sampling": {"temperature": 0.8, "top_p": 0.95, "seeds": f"0..{len(prompts) - 1}"},
                 "compile_1000_phrases_s": round(compile_1000_s, 3), "configs": {}}
    base = per["ungoverned"]
    for name in names:
        rs = per[name]
        tps = [r.completion_tokens / r.elapsed_s for r in rs]
        agg = sum(r.completion_tokens for r in rs) / sum(r.elapsed_s for r in rs)
        entry = {"tokens_per_s_median": round(pct(tps, 50), 2), "aggregate_tokens_per_s": round(agg, 2)}
        if name != "ungoverned":
            ratios = [(a.completion_tokens / a.elapsed_s) / (b.completion_tokens / b.elapsed_s)
                      for a, b in zip(rs, base, strict=True)]
            gus = [u for r in rs for u in r.gate_us]
            held = [h for r in rs for h in r.held_bytes]
            entry.update({
                "ratio_vs_ungoverned": summarize_ratio(ratios),
                "aggregate_ratio": round(entry["aggregate_tokens_per_s"] / out["configs"]["ungoverned"]
                                         ["aggregate_tokens_per_s"], 4),
                "gate_us": {"p50": round(pct(gus, 50), 1), "p99": round(pct(gus, 99), 1),
                            "max": round(max(gus), 1)},
                "held_bytes": {"median": pct(held, 50), "p99": pct(held, 99), "max": max(held)},
                "held_max_chars": max(r.held_max_chars for r in rs),
                "runs_where_policy_acted": sum(bool(r.decisions) for r in rs),
                "identical_text_to_ungoverned": sum(a.text == b.text for a, b in zip(rs, base, strict=True)),
            })
        out["configs"][name] = entry

    # flatness: gate time by position over one long generation under the default policy
    long_prompt = rt.engine.chat_prompt([{"role": "user", "content": "Write a long, detailed essay about the "
                                          "history of Paris, with many sections."}])
    lp = GenerationParams(max_tokens=args.long, ignore_eos=True, sampling=SamplingParams(temperature=0.8, seed=1))
    flat = {}
    for name in ("default", "1000_phrases"):
        r = run_one(rt, long_prompt, configs[name], lp)
        g = np.asarray(r.gate_us)
        b = 128 if args.long >= 256 else 32
        flat[name] = [{"tokens": f"{i}-{min(i + b, len(g))}", "p50": round(pct(g[i:i + b], 50), 1),
                       "p99": round(pct(g[i:i + b], 99), 1)} for i in range(0, len(g), b)]
    out["flatness"] = flat
    out["acting"] = acting(rt, args.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps(out, indent=2) + "\n")
    md = render(out)
    (RESULTS / "summary.md").write_text(md)
    print(md)
    return 0


ACTING = {
    "Eiffel prevented": ("Write a short paragraph about Paris and its famous tower.",
                         "rules:\n  - id: tower\n    forbid: {phrases: [Eiffel]}\n    action: prevent\n"),
    "email+phone prevented": ("Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132.",
                              "rules:\n  - id: pii\n    forbid: {patterns: [email, phone]}\n    action: prevent\n"),
    "email+phone redacted": ("Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132.",
                             "rules:\n  - id: pii\n    forbid: {patterns: [email, phone]}\n    action: redact\n"),
}


def acting(rt: Runtime, quick: bool) -> dict:
    """What governance costs when it acts: rollbacks and resamples, against the same seeds ungoverned."""
    res = {}
    for name, (text, rules) in ACTING.items():
        pol = parse_policy(f"version: 1\nname: acting\n{rules}", source=f"<bench:{name}>")
        rt.prepare(pol)
        prompt = rt.engine.chat_prompt([{"role": "user", "content": text}])
        ratios, rollbacks, decisions, held = [], [], [], []
        for seed in range(2 if quick else 8):
            params = GenerationParams(max_tokens=96, ignore_eos=True,
                                      sampling=SamplingParams(temperature=0.7, top_p=0.95, seed=seed))
            base = run_one(rt, prompt, None, params)
            gov = run_one(rt, prompt, pol, params)
            ratios.append((gov.completion_tokens / gov.elapsed_s) / (base.completion_tokens / base.elapsed_s))
            rollbacks.append(gov.rollbacks)
            decisions.append(len(gov.decisions))
            held.append(gov.held_max_chars)
        res[name] = {"ratio": summarize_ratio(ratios), "rollbacks_median": pct(rollbacks, 50),
                     "rollbacks_max": max(rollbacks), "decisions_median": pct(decisions, 50),
                     "held_max_chars": max(held), "runs": len(ratios)}
    return res


def render(out: dict) -> str:
    c = out["configs"]
    lines = [f"Model {out['model']}, {out['prompts']} prompts x {out['tokens']} tokens, temperature 0.8, "
             f"top_p 0.95, same seeds, interleaved; {out['machine']['cpu_count']} cores, no GPU.", "",
             "| policy | tokens/s (median) | ratio vs ungoverned: median (p1, p99) | aggregate ratio | "
             "gate us/token p50 / p99 | held bytes median / max | runs where it acted |",
             "|---|---|---|---|---|---|---|",
             f"| none (ungoverned) | {c['ungoverned']['tokens_per_s_median']} | 1 | 1 | - | - | - |"]
    for name, label in (("default", "default (PII pack redact + 4-phrase ban)"),
                        ("1000_phrases", "1,000 banned phrases (prevent)")):
        e = c[name]
        r = e["ratio_vs_ungoverned"]
        lines.append(f"| {label} | {e['tokens_per_s_median']} | {r['median']} ({r['p1']}, {r['p99']}) | "
                     f"{e['aggregate_ratio']} | {e['gate_us']['p50']} / {e['gate_us']['p99']} | "
                     f"{e['held_bytes']['median']:.0f} / {e['held_bytes']['max']} | "
                     f"{e['runs_where_policy_acted']}/{out['prompts']} |")
    lines += ["", f"Compiling 1,000 phrases: {out['compile_1000_phrases_s']} s (once per policy content).", "",
              "Gate time per token by output position (flatness), p50 / p99 us:", "",
              "| tokens | default | 1,000 phrases |", "|---|---|---|"]
    for a, b in zip(out["flatness"]["default"], out["flatness"]["1000_phrases"], strict=True):
        lines.append(f"| {a['tokens']} | {a['p50']} / {a['p99']} | {b['p50']} / {b['p99']} |")
    lines += ["", "When the policy acts (96 tokens, temperature 0.7, seeds 0..7, each against the same seed "
              "ungoverned):", "", "| scenario | tokens/s ratio median (min) | rollbacks median / max | "
              "decisions median | max chars held |", "|---|---|---|---|---|"]
    for name, a in out["acting"].items():
        lines.append(f"| {name} | {a['ratio']['median']} ({a['ratio']['min']}) | {a['rollbacks_median']:.0f} / "
                     f"{a['rollbacks_max']} | {a['decisions_median']:.0f} | {a['held_max_chars']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
