"""Governing an upstream against calling it directly, in one run, on the same prompts and seeds.

The upstream is llama-cpp-python's OpenAI-compatible server over the embedded GGUF (started here,
or --upstream URL). Three measurements:

1. No rule fires: each prompt and seed is sent straight to the upstream and through a real
   `ingate serve --upstream` (default policy), both streaming, the order alternating (the upstream
   reuses a cached prompt prefix, which favours whichever goes second). Time to first token and
   tokens/s at the client: medians and p99, and the ratios governed/direct; and the CPU time
   ingate's server spent per token. The upstream runs on CPU 0 alone and ingate and this client on
   the other CPUs, as an upstream on its own hardware would (on one shared pair of cores, every
   cycle ingate spends is taken from the upstream's decode: --shared measures that instead).
2. A stop rule fires: the tokens the upstream streamed after the violation when ingate cancels it
   (counted by a relay between ingate and the upstream) against streaming to the end (what a
   gateway that checks after the fact pays).
3. A prevent rule fires: the extra latency of a continuation (from closing the cancelled stream
   to the first token of the continuation), against the direct time to first token.

    .venv/bin/python bench/upstream.py [--prompts 12] [--seeds 2] [--tokens 96] [--quick]

Writes bench/results/upstream.json and bench/results/upstream.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from server import INGATE, free_port, pct, wait_ready

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from ingate.core import Request  # noqa: E402
from ingate.drivers.base import GenerationParams  # noqa: E402
from ingate.policy import NONE_POLICY, parse_policy  # noqa: E402
from ingate.sampling import SamplingParams  # noqa: E402
from ingate.upstream.config import upstream  # noqa: E402
from ingate.upstream.core import UpstreamCore  # noqa: E402
from upstreams import FaultProxy, llama_server  # noqa: E402  (the tests' real upstream and counting relay)

PARIS = "Write a short paragraph about Paris and its famous tower."
RULE = """
version: 1
name: bench-{action}
max_rollbacks: 8
rules:
  - id: tower
    forbid: {{phrases: [Eiffel]}}
    action: {action}
"""


def stream(url: str, body: dict) -> dict:
    """One streamed chat request: time to first content, content chunks, total time."""
    t0 = time.perf_counter()
    ttft, n, text = None, 0, []
    with httpx.stream("POST", url + "/chat/completions", json=body | {"stream": True}, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            ch = json.loads(line[6:])
            for c in ch.get("choices") or []:
                piece = (c.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(piece)
            if ch.get("usage"):
                n = ch["usage"]["completion_tokens"]
            elif ch.get("choices") and (ch["choices"][0].get("delta") or {}).get("content"):
                n += 0 if "governance" in ch else 1
    total = time.perf_counter() - t0
    return {"ttft_s": ttft, "total_s": total, "text": "".join(text), "chunks": n}


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def no_rule(upstream_url: str, prompts: list[str], seeds: int, tokens: int, tmp: Path) -> dict:
    port = free_port()
    proc = subprocess.Popen([INGATE, "serve", "--upstream", upstream_url, "--upstream-model", "smol",
                             "--upstream-kind", "llama.cpp", "--upstream-tokenizer", "embedded", "--port", str(port),
                             "--audit", str(tmp / "audit.sqlite3")], stderr=subprocess.DEVNULL)
    governed_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(governed_url, proc)
        cpu0 = cpu_s(proc.pid)
        rows = []
        for i, prompt in enumerate(prompts):
            for seed in range(seeds):
                body = {"model": "smol", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                        "temperature": 0.7, "seed": seed}
                order = [("direct", upstream_url), ("governed", governed_url + "/v1")]
                if (i + seed) % 2:
                    order.reverse()
                row = {}
                for name, url in order:
                    extra = {"stream_options": {"include_usage": True}} if name == "governed" else {}
                    row[name] = stream(url, body | extra)
                rows.append(row)
                print(f"  prompt {i + 1}/{len(prompts)} seed {seed}: direct {row['direct']['ttft_s'] * 1000:.0f} ms / "
                      f"governed {row['governed']['ttft_s'] * 1000:.0f} ms to first token", flush=True)
        cpu = cpu_s(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    out: dict = {}
    for name in ("direct", "governed"):
        ttft = [r[name]["ttft_s"] for r in rows if r[name]["ttft_s"] is not None]
        tps = [r[name]["chunks"] / r[name]["total_s"] for r in rows if r[name]["chunks"]]
        out[name] = {"ttft_ms_p50": round(pct(ttft, 50) * 1000, 1), "ttft_ms_p99": round(pct(ttft, 99) * 1000, 1),
                     "tokens_per_s_p50": round(pct(tps, 50), 2), "tokens_per_s_p1": round(pct(tps, 1), 2)}
    # per pair, the same prompt and seed: the ratio of throughputs and the difference of first-token times
    ratios = [(r["governed"]["chunks"] / r["governed"]["total_s"]) / (r["direct"]["chunks"] / r["direct"]["total_s"])
              for r in rows if r["governed"]["chunks"] and r["direct"]["chunks"]]
    dt = [(r["governed"]["ttft_s"] - r["direct"]["ttft_s"]) * 1000 for r in rows
          if r["governed"]["ttft_s"] is not None and r["direct"]["ttft_s"] is not None]
    token_ms = 1000 / out["direct"]["tokens_per_s_p50"]
    out["pairs"] = len(rows)
    out["throughput_ratio_p50"] = round(pct(ratios, 50), 4)
    out["throughput_ratio_p1"] = round(pct(ratios, 1), 4)
    out["ttft_extra_ms_p50"] = round(pct(dt, 50), 1)
    out["ttft_extra_ms_p99"] = round(pct(dt, 99), 1)
    out["one_token_ms"] = round(token_ms, 1)
    out["ingate_cpu_ms_per_token"] = round(cpu * 1000 / max(1, sum(r["governed"]["chunks"] for r in rows)), 3)
    return out


def _settings(core: UpstreamCore, tokens: int, want: int) -> list[GenerationParams]:
    """Sampling settings at which the ungoverned upstream names the tower."""
    found = []
    for seed in range(40):
        p = GenerationParams(max_tokens=tokens, sampling=SamplingParams(temperature=0.0 if seed == 0 else 0.8,
                                                                        seed=seed))
        if "eiffel" in core.run(Request([{"role": "user", "content": PARIS}], NONE_POLICY, p)).text.lower():
            found.append(p)
            if len(found) >= want:
                break
    return found


def rule_fires(upstream_url: str, runs: int, tokens: int) -> dict:
    proxy = FaultProxy(upstream_url)
    spec = upstream("smol", proxy.url, "smol", kind="llama.cpp", tokenizer="embedded", timeout_s=300)
    core = UpstreamCore(spec, None)
    msgs = [{"role": "user", "content": PARIS}]
    after_cancel, after_end, gaps, direct_ttft = [], [], [], []
    try:
        settings = _settings(core, tokens, runs)
        stop, prevent = parse_policy(RULE.format(action="stop")), parse_policy(RULE.format(action="prevent"))
        for p in settings:
            # streaming to the end: the ungoverned request, counted at the relay
            proxy.requests.clear()
            core.run(Request(msgs, NONE_POLICY, p))
            (rec,) = proxy.requests
            at = _violation(rec)
            if at is not None:
                after_end.append(len(rec.events) - at - 1)
                direct_ttft.append(rec.times[0] - rec.opened)
            # the stop rule: ingate cancels the upstream at the violation
            proxy.requests.clear()
            core.run(Request(msgs, stop, p))
            time.sleep(0.1)
            (rec,) = proxy.requests
            at = _violation(rec)
            if at is not None:
                after_cancel.append(len(rec.events) - at - 1)
            # the prevent rule: cancel, then continue before the match
            proxy.requests.clear()
            core.run(Request(msgs, prevent, p))
            reqs = list(proxy.requests)
            for a, b in zip(reqs, reqs[1:], strict=False):
                if b.times and a.closed is not None:
                    gaps.append(b.times[0] - a.closed)
            print(f"  seed {p.sampling.seed}: {after_end[-1] if after_end else '-'} tokens after the violation "
                  f"to the end, {after_cancel[-1] if after_cancel else '-'} with cancellation; "
                  f"{len(reqs) - 1} continuation(s)", flush=True)
    finally:
        core.close()
        proxy.close()
    return {"runs": len(after_end), "tokens_after_violation_streamed_to_end_p50": pct(after_end, 50),
            "tokens_after_violation_streamed_to_end_p99": pct(after_end, 99),
            "tokens_after_violation_cancelled_p50": pct(after_cancel, 50),
            "tokens_after_violation_cancelled_p99": pct(after_cancel, 99),
            "continuations": len(gaps), "continuation_ms_p50": round(pct(gaps, 50) * 1000, 1),
            "continuation_ms_p99": round(pct(gaps, 99) * 1000, 1),
            "direct_ttft_ms_p50": round(pct(direct_ttft, 50) * 1000, 1)}


def _violation(rec) -> int | None:
    for i in range(len(rec.events)):
        if "eiffel" in rec.content(i + 1).lower():
            return i
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--runs", type=int, default=8, help="runs in which the rule fires")
    ap.add_argument("--upstream", default=None, help="an upstream already running (default: start one)")
    ap.add_argument("--shared", action="store_true", help="upstream, ingate and client share every CPU")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.seeds, args.runs = 3, 1, 2
    prompts = [ln.strip() for ln in (HERE / "prompts.txt").read_text().splitlines() if ln.strip()][:args.prompts]
    cpus = sorted(os.sched_getaffinity(0))
    split = not args.shared and not args.upstream and len(cpus) > 1
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        url = args.upstream or stack.enter_context(llama_server(Path(d), {cpus[0]} if split else None, False))
        if split:
            os.sched_setaffinity(0, cpus[1:])  # this client, and ingate serve (it inherits it)
        where = f" on CPU {cpus[0]} alone" if split else ""
        print(f"upstream: {url}{where}; {len(prompts)} prompts x "
              f"{args.seeds} seeds, {args.tokens} tokens", flush=True)
        print("1. no rule fires: direct against governed", flush=True)
        res = {"cpus": "upstream on its own CPU" if split else "shared", "no_rule": no_rule(
            url, prompts, args.seeds, args.tokens, Path(d))}
        print("2-3. a rule fires: early cancellation, continuation", flush=True)
        res["rule_fires"] = rule_fires(url, args.runs, 160)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "upstream.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "upstream.md").write_text(report(res))
    print(report(res))
    return 0


def report(res: dict) -> str:
    n, r = res["no_rule"], res["rule_fires"]
    d, g = n["direct"], n["governed"]
    return "\n".join([
        "| upstream (llama.cpp server, SmolLM2-135M) | direct | through ingate | ratio |",
        "|---|---|---|---|",
        f"| time to first token, p50 / p99 | {d['ttft_ms_p50']} / {d['ttft_ms_p99']} ms | "
        f"{g['ttft_ms_p50']} / {g['ttft_ms_p99']} ms | {n['ttft_extra_ms_p50']:+} ms p50, "
        f"{n['ttft_extra_ms_p99']:+} ms p99 per pair (one token: {n['one_token_ms']} ms) |",
        f"| tokens/s, p50 / p1 | {d['tokens_per_s_p50']} / {d['tokens_per_s_p1']} | {g['tokens_per_s_p50']} / "
        f"{g['tokens_per_s_p1']} | {n['throughput_ratio_p50']} p50, {n['throughput_ratio_p1']} p1 per pair |",
        f"| tokens streamed after a stop-rule violation, p50 / p99 ({r['runs']} runs) | "
        f"{r['tokens_after_violation_streamed_to_end_p50']} / {r['tokens_after_violation_streamed_to_end_p99']} "
        f"(to the end) | {r['tokens_after_violation_cancelled_p50']} / {r['tokens_after_violation_cancelled_p99']} "
        "(cancelled) | |",
        f"| a continuation after a withdrawal, p50 / p99 ({r['continuations']}) | first token "
        f"{r['direct_ttft_ms_p50']} ms | {r['continuation_ms_p50']} / {r['continuation_ms_p99']} ms | |",
        f"\n{n['pairs']} request pairs, interleaved; ratios are per pair (same prompt, seed and upstream); "
        f"CPUs: {res['cpus']}; ingate's server spent {n['ingate_cpu_ms_per_token']} ms of CPU per token.\n"])


if __name__ == "__main__":
    sys.exit(main())
