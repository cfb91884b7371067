"""The server's cost: HTTP against the in-process loop, and governed against `policy: none`.

One run, same prompts and seeds, interleaved: each request goes once through `Runtime.run` in
this process and once through a real `ingate serve` on loopback (streaming, the official
client's way: SSE), then the concurrency levels replay the same requests from 1, 4 and 8
client threads. With one model and one worker, concurrency cannot raise throughput; what it
must not do is lose it, or let time to first token grow beyond the queueing it implies.

    .venv/bin/python bench/server.py [--requests 16] [--tokens 64] [--quick]

Writes bench/results/server.json and bench/results/server.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from ingate.drivers.base import GenerationParams
from ingate.policy import load_policy
from ingate.runtime import Runtime
from ingate.sampling import SamplingParams

HERE = Path(__file__).resolve().parent
INGATE = str(Path(sys.executable).with_name("ingate"))


def pct(xs, q) -> float:
    return round(float(np.percentile(np.asarray(xs, dtype=float), q)), 4) if len(xs) else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, name: str = "ingate serve", timeout: float = 300) -> None:
    """Until the server's /healthz answers 200; raises if it exits or takes longer than `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not start in {timeout:.0f} s")


def http_stream(url: str, prompt: str, seed: int, tokens: int, policy: str) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0.8, "top_p": 0.95, "seed": seed, "stream": True, "policy": policy,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, usage, text = None, None, []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices", []):
                piece = ch["delta"].get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(piece)
    elapsed = time.perf_counter() - t0
    n = usage["completion_tokens"]
    return {"ttft": ttft or elapsed, "elapsed": elapsed, "tokens": n, "tps": n / elapsed, "text": "".join(text)}


def in_process(rt: Runtime, prompt: str, seed: int, tokens: int, policy) -> dict:
    t0 = time.perf_counter()
    res = rt.run([{"role": "user", "content": prompt}], policy,
                 GenerationParams(max_tokens=tokens, sampling=SamplingParams(temperature=0.8, top_p=0.95, seed=seed)))
    elapsed = time.perf_counter() - t0
    return {"ttft": res.ttft_s or elapsed, "elapsed": elapsed, "tokens": res.completion_tokens,
            "tps": res.completion_tokens / elapsed, "text": res.text}


def concurrent(url: str, jobs: list[tuple[str, int]], tokens: int, c: int) -> dict:
    out: list[dict] = []
    lock = threading.Lock()
    todo = list(jobs)

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                prompt, seed = todo.pop(0)
            r = http_stream(url, prompt, seed, tokens, "default")
            with lock:
                out.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"concurrency": c, "aggregate_tps": round(sum(r["tokens"] for r in out) / wall, 2),
            "ttft_p50_s": pct([r["ttft"] for r in out], 50), "ttft_p99_s": pct([r["ttft"] for r in out], 99),
            "per_request_tps_p50": pct([r["tps"] for r in out], 50)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.tokens = 4, 24
    prompts = [ln.strip() for ln in (HERE / "prompts.txt").read_text().splitlines() if ln.strip()]
    jobs = [(prompts[i % len(prompts)], i) for i in range(args.requests)]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    audit = Path(tempfile.mkdtemp()) / "audit.sqlite3"
    env = dict(os.environ, INGATE_AUDIT=str(audit))
    proc = subprocess.Popen([INGATE, "serve", "--port", str(port), "--policy", "default", "--policy", "none",
                             "--max-queue", "64"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        rt = Runtime.load(audit=Path(tempfile.mkdtemp()) / "audit.sqlite3")
        default = load_policy(None)
        rt.prepare(default)
        http_stream(url, "warm up", 0, 8, "default")
        in_process(rt, "warm up", 0, 8, default)
        pairs, gov = [], []
        for i, (prompt, seed) in enumerate(jobs):
            a = in_process(rt, prompt, seed, args.tokens, default)
            b = http_stream(url, prompt, seed, args.tokens, "default")
            c = http_stream(url, prompt, seed, args.tokens, "none")
            pairs.append((a, b))
            gov.append((b, c))
            print(f"  [{i + 1}/{len(jobs)}] in-process {a['tps']:.1f} tok/s, http {b['tps']:.1f}, "
                  f"http none {c['tps']:.1f}" + ("" if a["text"] == b["text"] else "  (texts differ!)"),
                  file=sys.stderr)
        same_text = sum(a["text"] == b["text"] for a, b in pairs)
        levels = [concurrent(url, jobs, args.tokens, c) for c in (1, 4, 8)]
    finally:
        proc.terminate()
        proc.wait(10)

    out = {
        "requests": len(jobs), "tokens": args.tokens, "identical_text_http_vs_in_process": same_text,
        "c1": {
            "tps_ratio_http_over_in_process": {"median": pct([b["tps"] / a["tps"] for a, b in pairs], 50),
                                               "p1": pct([b["tps"] / a["tps"] for a, b in pairs], 1)},
            "ttft_ms_in_process": {"p50": pct([a["ttft"] * 1000 for a, _ in pairs], 50),
                                   "p99": pct([a["ttft"] * 1000 for a, _ in pairs], 99)},
            "ttft_ms_http": {"p50": pct([b["ttft"] * 1000 for _, b in pairs], 50),
                             "p99": pct([b["ttft"] * 1000 for _, b in pairs], 99)},
        },
        "governed_over_none_http_tps": {"median": pct([b["tps"] / c["tps"] for b, c in gov], 50),
                                        "p1": pct([b["tps"] / c["tps"] for b, c in gov], 1)},
        "in_process_aggregate_tps": round(sum(a["tokens"] for a, _ in pairs)
                                          / sum(a["elapsed"] for a, _ in pairs), 2),
        "concurrency": levels,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "server.json").write_text(json.dumps(out, indent=2) + "\n")
    c1 = out["c1"]
    md = [f"{len(jobs)} requests x {args.tokens} tokens, temperature 0.8, same seeds; one model, one worker.", "",
          f"- HTTP (streaming) over in-process tokens/s, concurrency 1: median "
          f"{c1['tps_ratio_http_over_in_process']['median']} (p1 {c1['tps_ratio_http_over_in_process']['p1']}); "
          f"identical text in {same_text}/{len(jobs)}.",
          f"- Time to first token, in-process p50 {c1['ttft_ms_in_process']['p50']} ms (p99 "
          f"{c1['ttft_ms_in_process']['p99']}), HTTP p50 {c1['ttft_ms_http']['p50']} ms "
          f"(p99 {c1['ttft_ms_http']['p99']}).",
          f"- Through the server, governed (default policy) over `policy: none`: median "
          f"{out['governed_over_none_http_tps']['median']} (p1 {out['governed_over_none_http_tps']['p1']}).", "",
          "| concurrency | aggregate tokens/s | vs in-process sequential | TTFT p50 / p99 s "
          "| per-request tokens/s p50 |",
          "|---|---|---|---|---|"]
    for lv in levels:
        ratio = lv["aggregate_tps"] / out["in_process_aggregate_tps"]
        md.append(f"| {lv['concurrency']} | {lv['aggregate_tps']} | {ratio:.3f} | "
                  f"{lv['ttft_p50_s']} / {lv['ttft_p99_s']} | {lv['per_request_tps_p50']} |")
    text = "\n".join(md) + "\n"
    (HERE / "results" / "server.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
