"""Many governed streams at once: the batched engine against one-at-a-time and against vLLM, in one run.

Parts:
  curve    raw batched decode on the embedded model: tokens/s with B sequences per llama_decode
           (B = 1 ... 32), at 1 and 2 threads: the physical limit the served figures work against,
           and what more cores would give
  served   streaming clients at concurrency 1, 2, 4, 8, 16, each request 64 tokens (ignore_eos) at
           temperature 0.8 with a fixed seed, against:
             ingate --parallel 16, default policy       (batched, governed)
             ingate --parallel 16, policy none          (batched, ungoverned: the gate's cost)
             ingate --parallel 1, default policy        (one at a time: before batching)
             vLLM's CPU build alone, the same model     (the peer; when INGATE_VLLM_PYTHON/MODEL are set)
           aggregate and per-stream tokens/s, time to first token and total latency (p50, p99).
           Rounds interleave the configurations, their order reversed every other round.
  prefix   time to first token of a request with a 1,000-token shared system prompt, first (cold)
           and repeated with another question (a prefix-cache hit)
  gate     the gate's time per row and per step as the batch grows (from the loop's own figures)

Run:  make bench-batch    (or .venv/bin/python bench/batch.py [--quick] [--no-vllm])
Writes bench/results/batch.json and bench/results/batch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from run import pct  # noqa: E402  (bench/ is the script's directory)
from upstreams import ingate_serve  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROMPTS = [p for p in (Path(__file__).resolve().parent / "prompts.txt").read_text().splitlines() if p.strip()]
SEED = 20261207
LEVELS = [1, 2, 4, 8, 16]
TOKENS = 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the raw curve ---------------------------------------------------------------------------------------
def curve_part(quick: bool) -> dict:
    import numpy as np

    from ingate.engines import layout
    from ingate.engines.files import default_model_path
    from ingate.engines.llamacpp import LlamaCppEngine

    lay = layout.choose(default_model_path()).layout
    sizes = [1, 2, 4, 8, 16] if quick else [1, 2, 4, 8, 16, 32]
    steps = 16 if quick else 48
    out: dict = {"layout": lay, "threads": {}}
    for threads in (1, 2):
        eng = LlamaCppEngine(None, n_seq=max(sizes) + 1, layout=lay, n_threads=threads, n_ctx=512)
        prompt = eng.tokenize(PROMPTS[0], add_bos=True)
        row: dict = {}
        for b in sizes:
            seqs = eng.sequences[1:b + 1]
            for s in seqs:
                s.start(prompt)
            while any(s.pending for s in seqs):
                eng.decode(seqs, 512)
            times = []
            for _ in range(steps):
                for s in seqs:
                    s.accept(int(np.argmax(s.step())))
                t0 = time.perf_counter()
                eng.decode(seqs, 512)
                times.append(time.perf_counter() - t0)
            for s in seqs:
                s.free()
            med = float(np.median(times))
            row[str(b)] = {"step_ms_p50": round(med * 1e3, 2), "tokens_per_s": round(b / med, 1)}
            log(f"  curve {threads} thread(s), batch {b:>2}: {b / med:6.1f} tok/s ({med * 1e3:.1f} ms a step)")
        out["threads"][str(threads)] = row
        eng.close()
    return out


# ---- served ----------------------------------------------------------------------------------------------
def stream(base: str, model: str, prompt: str | list, seed: int, tokens: int, extra: dict) -> dict:
    msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    body = {"model": model, "messages": msgs, "max_tokens": tokens, "temperature": 0.8, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": True} | extra
    t0 = time.perf_counter()
    first, n = None, 0
    with httpx.stream("POST", f"{base}/chat/completions", json=body, timeout=900) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            ch = json.loads(line[6:])
            if ch.get("usage"):
                n = ch["usage"]["completion_tokens"]
            if first is None and any((c.get("delta") or {}).get("content") for c in ch.get("choices") or []):
                first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {"ttft": first if first is not None else float("nan"), "total": total, "tokens": n}


def run_level(base: str, model: str, extra: dict, conc: int, n_req: int, tokens: int, offset: int) -> dict:
    jobs = [(PROMPTS[(offset + i) % len(PROMPTS)], SEED + offset + i) for i in range(n_req)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(lambda j: stream(base, model, j[0], j[1], tokens, extra), jobs))
    wall = time.perf_counter() - t0
    return {"wall": wall, "tokens": sum(r["tokens"] for r in res), "ttft": [r["ttft"] for r in res],
            "total": [r["total"] for r in res], "per_stream": [r["tokens"] / r["total"] for r in res]}


class Served:
    """A server the benchmark talks to: ingate serve, or vLLM alone."""

    def __init__(self, name: str, start, stop, base: str, model: str, extra: dict):
        self.name, self._start, self._stop, self.base, self.model, self.extra = name, start, stop, base, model, extra


def ingate(flags: list[str], extra: dict) -> tuple:
    env = dict(os.environ, INGATE_AUDIT=os.environ.get("INGATE_BENCH_AUDIT", "/tmp/ingate-bench-batch.sqlite3"))
    proc, url = ingate_serve(*flags, env=env, ready="/healthz")
    return proc, url + "/v1"


def served_part(quick: bool, with_vllm: bool) -> dict:
    configs: dict[str, dict] = {
        "ingate, --parallel 16, default policy": {"flags": ["--parallel", "16"], "extra": {}},
        "ingate, --parallel 16, policy none": {"flags": ["--parallel", "16", "--policy", "default", "--policy",
                                                          "none"], "extra": {"policy": "none"}},
        "ingate, --parallel 1, default policy": {"flags": ["--parallel", "1"], "extra": {}},
    }
    procs: dict = {}
    vllm = None
    try:
        for c, cfg in configs.items():
            proc, base = ingate(cfg["flags"], cfg["extra"])
            procs[c] = proc
            cfg["base"], cfg["model"] = base, "m"
        if with_vllm:
            from ingate.vllm.launch import VllmServer

            python, model = os.environ.get("INGATE_VLLM_PYTHON"), os.environ.get("INGATE_VLLM_MODEL")
            if python and model:
                vllm = VllmServer(model, "smol", [], ["--max-model-len", "1024", "--dtype", "bfloat16",
                                                      "--enforce-eager", "--max-num-seqs", "16"],
                                  python=python, plugin=False).start()
                configs["vLLM alone (CPU build)"] = {"base": vllm.base_url, "model": "smol", "extra": {}}
            else:
                log("  vLLM: INGATE_VLLM_PYTHON / INGATE_VLLM_MODEL not set; `make bench-batch` sets them")
        for cfg in configs.values():  # warm: first requests pay one-off costs
            run_level(cfg["base"], cfg["model"], cfg["extra"], 2, 2, 8, 0)
        return _rounds(configs, quick)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(30)
        if vllm is not None:
            vllm.stop()


def _rounds(configs: dict, quick: bool) -> dict:
    rounds = 1 if quick else 2
    tokens = 32 if quick else TOKENS
    acc = {c: {lv: {"wall": 0.0, "tokens": 0, "ttft": [], "total": [], "per_stream": []} for lv in LEVELS}
           for c in configs}
    for rnd in range(rounds):
        for lv in LEVELS:
            n_req = max(4, lv) if quick else max(8, 2 * lv)
            order = list(configs) if rnd % 2 == 0 else list(configs)[::-1]
            for c in order:
                cfg = configs[c]
                r = run_level(cfg["base"], cfg["model"], cfg["extra"], lv, n_req, tokens, offset=rnd * 31 + lv)
                a = acc[c][lv]
                a["wall"] += r["wall"]
                a["tokens"] += r["tokens"]
                for k in ("ttft", "total", "per_stream"):
                    a[k] += r[k]
                log(f"  round {rnd + 1}/{rounds} concurrency {lv:>2} {c:<40} {r['tokens'] / r['wall']:6.1f} tok/s, "
                    f"TTFT p50 {pct(r['ttft'], 50) * 1e3:6.0f} ms")
    out: dict = {"rounds": rounds, "tokens_per_request": tokens, "levels": {}}
    for lv in LEVELS:
        for c in configs:
            a = acc[c][lv]
            out["levels"].setdefault(str(lv), {})[c] = {
                "requests": len(a["ttft"]), "tokens_per_s": round(a["tokens"] / a["wall"], 1),
                "per_stream_tokens_per_s_p50": round(pct(a["per_stream"], 50), 1),
                "ttft_ms_p50": round(pct(a["ttft"], 50) * 1e3, 1), "ttft_ms_p99": round(pct(a["ttft"], 99) * 1e3, 1),
                "latency_ms_p50": round(pct(a["total"], 50) * 1e3, 1),
                "latency_ms_p99": round(pct(a["total"], 99) * 1e3, 1)}
    return out


# ---- the prefix cache and the gate per step ----------------------------------------------------------------
def prefix_and_gate_part(quick: bool) -> dict:
    """TTFT with a ~1,000-token system prompt: cold (a system prompt never seen), then a hit (the same
    system prompt, another question); and the gate's cost per row and per step as the batch grows."""
    proc, base = ingate(["--parallel", "8"], {})
    root = base.removesuffix("/v1")
    try:
        cold, hit = [], []
        for i in range(2 if quick else 5):
            words = " ".join(f"{PROMPTS[(i + k) % len(PROMPTS)]} (rule {i}.{k})" for k in range(60))
            system = {"role": "system", "content": words}
            for j, bucket in ((0, cold), (1, hit)):
                q = [system, {"role": "user", "content": f"In one sentence, what does rule {i}.{j} say?"}]
                bucket.append(stream(base, "m", q, SEED + i, 8, {})["ttft"])
        cache = httpx.get(root + "/healthz").json()["engine"].get("prefix_cache")
        gate: dict = {}
        for lv in (1, 4, 16):
            run_level(base, "m", {}, lv, lv, 48, 5)
            gate[str(lv)] = httpx.get(root + "/healthz").json()["engine"]["batch"]
    finally:
        proc.terminate()
        proc.wait(30)
    return {"system_prompt_tokens_approx": 1000, "ttft_ms_cold_p50": round(float(np.median(cold)) * 1e3, 1),
            "ttft_ms_hit_p50": round(float(np.median(hit)) * 1e3, 1), "prefix_cache": cache, "gate": gate}


def report(res: dict) -> str:
    lines = ["| concurrency | configuration | tokens/s | per stream p50 | TTFT p50 / p99 (ms) | "
             "latency p50 / p99 (ms) |", "|---|---|---|---|---|---|"]
    for lv, cfgs in res["served"]["levels"].items():
        for c, r in cfgs.items():
            lines.append(f"| {lv} | {c} | {r['tokens_per_s']} | {r['per_stream_tokens_per_s_p50']} | "
                         f"{r['ttft_ms_p50']} / {r['ttft_ms_p99']} | {r['latency_ms_p50']} / {r['latency_ms_p99']} |")
    cv = res["curve"]
    sizes = list(next(iter(cv["threads"].values())))
    lines += ["", f"Batched decode, one llama_decode of B sequences (layout {cv['layout']}), tokens/s:", "",
              "| threads | " + " | ".join(f"B={b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for t, row in cv["threads"].items():
        lines.append(f"| {t} | " + " | ".join(str(row[b]["tokens_per_s"]) for b in sizes) + " |")
    p = res["prefix"]
    lines += ["", f"Prefix cache: a shared system prompt of about {p['system_prompt_tokens_approx']} tokens, time to "
              f"first token {p['ttft_ms_cold_p50']} ms cold, {p['ttft_ms_hit_p50']} ms on a hit (p50); the cache: "
              f"{p['prefix_cache']}.", "", "The gate per row and per step as the batch grows (the loop's last 512 "
              "steps, after concurrency N):", "", "| concurrency | batch p50 | gate us per row p50 / p99 | gate us per "
              "step p50 / p99 | step ms p50 / p99 |", "|---|---|---|---|---|"]
    for lv, b in p["gate"].items():
        lines.append(f"| {lv} | {b['batch_p50']} | {b['gate_us_row_p50']} / {b['gate_us_row_p99']} | "
                     f"{b['gate_us_step_p50']} / {b['gate_us_step_p99']} | {b['step_ms_p50']} / {b['step_ms_p99']} |")
    lines += [
              "", f"{res['served']['rounds']} interleaved round(s); {res['served']['tokens_per_request']} tokens per "
              f"request (ignore_eos), temperature 0.8, fixed seeds; CPUs: {res['cpus']} ({res['machine']})."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-vllm", action="store_true", help="leave vLLM out of the served part")
    a = ap.parse_args()
    # a SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the servers this started are stopped by
    # their `finally`, not left running as orphans that skew the next measurement
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res: dict = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine()}
    log("the batched-decode curve...")
    res["curve"] = curve_part(a.quick)
    log("served: ingate batched, ingate one at a time, vLLM...")
    res["served"] = served_part(a.quick, not a.no_vllm)
    log("the prefix cache and the gate per step...")
    res["prefix"] = prefix_and_gate_part(a.quick)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch.json").write_text(json.dumps(res, indent=1))
    md = report(res)
    (RESULTS / "batch.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
