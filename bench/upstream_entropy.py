"""How far is entropy estimated from an upstream's top-k logprobs from the exact entropy?

An upstream sends at most k alternatives per token (OpenAI: 20 on chat, 5 on completions), not the
distribution. ingate estimates the entropy as -sum p log p over those k plus -r log p_min for the
mass r they leave (no token outside the top k is likelier than the least of them, p_min): a lower
bound (ingate.upstream.deltas.top_k_entropy). Here the embedded model's
full logits give both, token by token, on the bench prompts: the exact entropy of the raw
distribution (temperature 1, what an upstream's logprobs describe) and the estimate from its top k.

    .venv/bin/python bench/upstream_entropy.py [--prompts 12] [--tokens 64]

Writes bench/results/upstream_entropy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ingate.runtime import Runtime
from ingate.sampling import Sampler, SamplingParams
from ingate.upstream.deltas import top_k_entropy

HERE = Path(__file__).resolve().parent
KS = (5, 20)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    prompts = [ln.strip() for ln in (HERE / "prompts.txt").read_text().splitlines() if ln.strip()][:args.prompts]
    rt = Runtime.load(use_audit=False)
    eng = rt.engine
    exact: list[float] = []
    est: dict[int, list[float]] = {k: [] for k in KS}
    for i, prompt in enumerate(prompts):
        eng.start(eng.chat_prompt([{"role": "user", "content": prompt}]))
        sampler = Sampler(SamplingParams(temperature=0.7, seed=i))
        for _ in range(args.tokens):
            x = eng.step().astype(np.float64)
            lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
            p = np.exp(lp)
            exact.append(float(-(p[p > 0] * lp[p > 0]).sum()))
            top = np.sort(lp)[::-1]
            for k in KS:
                est[k].append(top_k_entropy(top[:k].tolist()))
            t = sampler.sample(x.astype(np.float32), None)
            if eng.is_eog(t):
                break
            eng.accept(t)
        print(f"  prompt {i + 1}/{len(prompts)}: {len(exact)} tokens so far", flush=True)
    rt.close()
    h = np.asarray(exact)
    res: dict = {"tokens": len(exact), "exact_nats_p50": round(float(np.median(h)), 4)}
    for k in KS:
        e = np.asarray(est[k])
        err = h - e  # >= 0: the estimate is a lower bound
        res[f"top{k}"] = {"abs_error_p50": round(float(np.median(err)), 4),
                          "abs_error_p99": round(float(np.percentile(err, 99)), 4),
                          "rel_error_p50": round(float(np.median(err / np.maximum(h, 1e-9))), 4),
                          "within_0.1_nats": round(float(np.mean(err <= 0.1)), 4),
                          "never_above_exact": bool((err >= -1e-6).all())}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "upstream_entropy.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["| top-k logprobs | abs. error p50 | abs. error p99 | rel. error p50 | within 0.1 nats | a lower bound |",
             "|---|---|---|---|---|---|"]
    for k in KS:
        r = res[f"top{k}"]
        lines.append(f"| {k} | {r['abs_error_p50']} nats | {r['abs_error_p99']} nats | {r['rel_error_p50']:.1%} | "
                     f"{r['within_0.1_nats']:.1%} | {'yes' if r['never_above_exact'] else 'NO'} |")
    lines.append(f"\n{res['tokens']} tokens of the embedded model; exact entropy p50 {res['exact_nats_p50']} nats.\n")
    (out / "upstream_entropy.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
