"""vLLM with ingate's logits processor against vLLM alone, in one run on the same prompts and seeds.

Two parts:
  masks   the processor's own cost per engine step (rows advanced, masks looked up, one scatter of
          -inf into the logits), against batch size (1, 4, 16, 64 rows) and rules (10 and 1,000
          phrases), on the embedded model's vocabulary; and what a cold automaton state costs once.
  served  real vLLM servers (CPU build) on loopback: vLLM alone, and vLLM with the plugin at policy
          "none" (no vllm_xargs), the default policy, and 1,000 phrases, at concurrency 1, 4 and 16:
          throughput, time to first token and inter-token latency. Rounds interleave the
          configurations so the machine's noise hits all of them alike.

Run:  make bench-vllm
      (or INGATE_VLLM_PYTHON=... INGATE_VLLM_MODEL=... .venv/bin/python bench/vllm_plugin.py [--quick])
Writes bench/results/vllm.json and bench/results/vllm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from ingate.policy import load_policy, parse_policy
from phrases import made_up_phrases  # bench/ is the script's directory
from run import pct

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [p for p in (Path(__file__).resolve().parent / "prompts.txt").read_text().splitlines() if p.strip()]
SEED = 20261201
NAME = "smol"


def phrases_policy(n: int, name: str) -> str:
    items = "\n".join(f"      - {p}" for p in made_up_phrases(n, SEED))
    return (f"version: 1\nname: {name}\nrules:\n  - id: names\n    forbid:\n      phrases:\n{items}\n"
            "    action: prevent\n")


# ---- the processor's cost per step -----------------------------------------------------------------
def masks_part(quick: bool) -> dict:
    import torch

    from ingate.runtime import Runtime
    from ingate.vllm.rows import Batch, PolicySet

    rt = Runtime.load(audit=None)
    table = rt.table
    passage = " ".join(PROMPTS) + " " + " ".join(made_up_phrases(40, SEED))  # partial and whole names
    tokens = rt.engine.tokenize(passage)
    out: dict = {"vocab": table.size, "rows": {}}
    steps = 60 if quick else 200
    for n_rules in (10, 1000):
        pol = parse_policy(phrases_policy(n_rules, f"p{n_rules}"), source=f"<{n_rules} phrases>")
        t0 = time.perf_counter()
        ps = PolicySet({"p": pol}, table)
        out.setdefault("compile_s", {})[n_rules] = round(time.perf_counter() - t0, 3)
        for b in (1, 4, 16, 64):
            batch = Batch(ps)
            outs = [[] for _ in range(b)]
            for i in range(b):
                batch.add(i, {"ingate_policy": "p"}, outs[i])
            logits = torch.zeros((b, table.size), dtype=torch.float32)
            warm, cold = [], []
            for step in range(steps):
                for i in range(b):  # each row at its own place in the passage
                    outs[i].append(tokens[(step + 37 * i) % len(tokens)])
                misses = ps.misses
                t = time.perf_counter()
                rows, ids = batch.masks()
                if len(rows):
                    logits.index_put_((torch.from_numpy(rows), torch.from_numpy(ids)), torch.tensor(float("-inf")))
                dt = (time.perf_counter() - t) * 1e6
                (cold if ps.misses > misses else warm).append(dt)
            out["rows"][f"{n_rules}x{b}"] = {
                "phrases": n_rules, "batch": b, "steps": steps,
                "warm_us_p50": round(pct(warm, 50), 1), "warm_us_p99": round(pct(warm, 99), 1),
                "cold_steps": len(cold), "cold_us_p50": round(pct(cold, 50), 1), "cold_us_max": round(max(cold), 1)
                if cold else None}
            print(f"  masks {n_rules:>5} phrases x {b:>2} rows: warm p50 {pct(warm, 50):8.1f} us, p99 "
                  f"{pct(warm, 99):8.1f} us; {len(cold)} cold steps", file=sys.stderr, flush=True)
    return out


# ---- served ----------------------------------------------------------------------------------------
def stream(base: str, prompt: str, seed: int, tokens: int, policy: str | None) -> dict:
    body: dict = {"model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                  "temperature": 0.8, "seed": seed, "stream": True, "stream_options": {"include_usage": True},
                  "ignore_eos": True}
    if policy is not None:
        body["vllm_xargs"] = {"ingate_policy": policy}
    t0 = time.perf_counter()
    stamps: list[float] = []
    n = 0
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            ch = json.loads(line[6:])
            if ch.get("usage"):
                n = ch["usage"]["completion_tokens"]
            for c in ch.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter() - t0)
    return {"ttft": stamps[0] if stamps else float("nan"), "itl": list(np.diff(stamps)), "tokens": n,
            "total": time.perf_counter() - t0}


def run_level(base: str, policy: str | None, conc: int, n_req: int, tokens: int, offset: int) -> dict:
    jobs = [(PROMPTS[(offset + i) % len(PROMPTS)], SEED + offset + i) for i in range(n_req)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(lambda j: stream(base, j[0], j[1], tokens, policy), jobs))
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": sum(r["tokens"] for r in res), "ttft": [r["ttft"] for r in res],
            "itl": [x for r in res for x in r["itl"]]}


def served_part(quick: bool) -> dict:
    from ingate.vllm.launch import VllmServer

    python, model = os.environ.get("INGATE_VLLM_PYTHON"), os.environ.get("INGATE_VLLM_MODEL")
    if not python or not model:
        raise SystemExit("set INGATE_VLLM_PYTHON and INGATE_VLLM_MODEL, or run `make bench-vllm`")
    tmp = Path(tempfile.mkdtemp(prefix="ingate-bench-vllm-"))
    (tmp / "thousand.yaml").write_text(phrases_policy(1000, "thousand"))
    pols = [load_policy("default"), load_policy(str(tmp / "thousand.yaml"))]
    args = ["--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager", "--max-num-seqs", "16"]
    plain = VllmServer(model, NAME, [], args, python=python, plugin=False)
    plugin = VllmServer(model, NAME, pols, args, python=python)
    configs = {"vllm": (plain, None), "plugin, none": (plugin, None), "plugin, default": (plugin, "default"),
               "plugin, 1,000 phrases": (plugin, "thousand")}
    levels = [1, 4, 16]
    rounds = 1 if quick else 2
    tokens = 32 if quick else 64
    acc: dict = {c: {lv: {"wall": 0.0, "tokens": 0, "ttft": [], "itl": []} for lv in levels} for c in configs}
    try:
        plain.start()
        plugin.start()
        for base in (plain.base_url, plugin.base_url):  # warm both (first requests pay one-off costs)
            run_level(base, None, 4, 4, 8, 0)
        for rnd in range(rounds):
            for lv in levels:
                n_req = max(8, 2 * lv) if not quick else max(4, lv)
                order = list(configs) if rnd % 2 == 0 else list(configs)[::-1]  # no configuration always first
                for c in order:
                    srv, pol = configs[c]
                    r = run_level(srv.base_url, pol, lv, n_req, tokens, offset=rnd * 7 + lv)
                    a = acc[c][lv]
                    a["wall"] += r["wall"]
                    a["tokens"] += r["tokens"]
                    a["ttft"] += r["ttft"]
                    a["itl"] += r["itl"]
                    print(f"  round {rnd + 1}/{rounds} concurrency {lv:>2} {c:<22} "
                          f"{r['tokens'] / r['wall']:6.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        plain.stop()
        plugin.stop()
    out: dict = {"rounds": rounds, "tokens_per_request": tokens, "levels": {}}
    for lv in levels:
        base_tps = acc["vllm"][lv]["tokens"] / acc["vllm"][lv]["wall"]
        for c in configs:
            a = acc[c][lv]
            tps = a["tokens"] / a["wall"]
            out["levels"].setdefault(str(lv), {})[c] = {
                "requests": len(a["ttft"]), "tokens_per_s": round(tps, 1), "ratio": round(tps / base_tps, 3),
                "ttft_ms_p50": round(pct(a["ttft"], 50) * 1e3, 1), "ttft_ms_p99": round(pct(a["ttft"], 99) * 1e3, 1),
                "itl_ms_p50": round(pct(a["itl"], 50) * 1e3, 1), "itl_ms_p99": round(pct(a["itl"], 99) * 1e3, 1)}
    return out


def report(res: dict) -> str:
    lines = ["| concurrency | configuration | tokens/s | ratio to vLLM | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) |",
             "|---|---|---|---|---|---|"]
    for lv, cfgs in res["served"]["levels"].items():
        for c, r in cfgs.items():
            lines.append(f"| {lv} | {c} | {r['tokens_per_s']} | {r['ratio']} | {r['ttft_ms_p50']} / "
                         f"{r['ttft_ms_p99']} | {r['itl_ms_p50']} / {r['itl_ms_p99']} |")
    m = res["masks"]
    lines += ["", f"Processor cost per engine step ({m['vocab']}-token vocabulary; rows advanced, masks looked up, "
              "one scatter):", "", "| phrases | rows | warm p50 / p99 (us) | cold steps | cold p50 / max (us) |",
              "|---|---|---|---|---|"]
    for r in m["rows"].values():
        lines.append(f"| {r['phrases']} | {r['batch']} | {r['warm_us_p50']} / {r['warm_us_p99']} | {r['cold_steps']} "
                     f"| {r['cold_us_p50']} / {r['cold_us_max']} |")
    s = res["served"]
    lines += ["", f"{s['rounds']} interleaved round(s), the order of the configurations reversed every other "
              f"round; {s['tokens_per_request']} tokens per request (ignore_eos), temperature 0.8, fixed seeds; "
              f"CPUs: {res['cpus']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["all", "masks", "served"], default="all")
    a = ap.parse_args()
    res: dict = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    print("processor cost per step...", file=sys.stderr, flush=True)
    res["masks"] = masks_part(a.quick) if a.part != "served" else {"vocab": 0, "rows": {}}
    if a.part != "masks":
        print("served: vLLM alone and with the plugin...", file=sys.stderr, flush=True)
        res["served"] = served_part(a.quick)
    else:
        res["served"] = {"rounds": 0, "tokens_per_request": 0, "levels": {}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (RESULTS / "vllm.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
