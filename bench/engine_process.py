"""What running the engine in its own process costs through the server: tokens/s and time to
first token, against the in-process design at the commit before it, in one run.

Servers, all on loopback, all loaded at once, asked the same requests (prompt, seed) in rotating
order one request at a time, so the machine's noise falls on each alike:
  process   this checkout, the engine in its own process (the default)
  inproc    this checkout with INGATE_ENGINE_PROCESS=0
  previous  the commit before the engine process (--previous, default 6579877), from `git archive`
  default   this checkout with nothing set (threads tuned: what a user gets)
The first three run with INGATE_THREADS=1 (the previous commit's default on 2 cores), so their
ratios measure the process boundary alone.

    .venv/bin/python bench/engine_process.py [--requests 16] [--tokens 128] [--quick]

Writes bench/results/engine_process.json and bench/results/engine_process.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import free_port, http_stream, pct, wait_ready  # noqa: E402  (bench/server.py: shared helpers)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREVIOUS = "6579877"


def previous_src(rev: str, into: Path) -> Path:
    """The `src/` tree of commit `rev`, extracted with git archive (the repository is not touched)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(into, filter="data")
    return into / "src"


class Server:
    def __init__(self, name: str, env: dict, src: Path | None = None):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tmp = Path(tempfile.mkdtemp())
        env = dict(os.environ, INGATE_AUDIT=str(tmp / "audit.sqlite3"), **env)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        self.proc = subprocess.Popen([sys.executable, "-m", "ingate.cli", "serve", "--port", str(self.port),
                                      "--policy", "default"], env=env, cwd=tmp,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(self.url, self.proc, f"server {name}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--previous", default=PREVIOUS, help="the commit with the in-process design")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.tokens = 4, 32
    prompts = [ln.strip() for ln in (HERE / "prompts.txt").read_text().splitlines() if ln.strip()]
    jobs = [(prompts[i % len(prompts)], i) for i in range(args.requests)]
    one = {"INGATE_THREADS": "1"}
    specs = [("process", one | {"INGATE_ENGINE_PROCESS": "1"}, None),
             ("inproc", one | {"INGATE_ENGINE_PROCESS": "0"}, None)]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            specs.append(("previous", one, previous_src(args.previous, Path(tmp))))
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            print(f"engine_process: no previous commit {args.previous} ({e}); comparing this checkout only",
                  file=sys.stderr)
        specs.append(("default", {}, None))
        servers = []
        try:
            for name, env, src in specs:
                print(f"engine_process: starting {name}", file=sys.stderr, flush=True)
                servers.append(Server(name, env, src))
            for s in servers:
                http_stream(s.url, "warm up", 0, 16, "default")
            runs: dict[str, list[dict]] = {s.name: [] for s in servers}
            for i, (prompt, seed) in enumerate(jobs):
                order = servers[i % len(servers):] + servers[:i % len(servers)]
                for s in order:
                    runs[s.name].append(http_stream(s.url, prompt, seed, args.tokens, "default"))
                print(f"  [{i + 1}/{len(jobs)}] " + ", ".join(f"{n} {r[-1]['tps']:.1f}" for n, r in runs.items())
                      + " tok/s", file=sys.stderr, flush=True)
            health = {s.name: httpx.get(s.url + "/healthz").json() for s in servers}
        finally:
            for s in servers:
                s.stop()

    base = "previous" if "previous" in runs else "inproc"

    def ratio(a: str, b: str) -> dict:
        r = [x["tps"] / y["tps"] for x, y in zip(runs[a], runs[b], strict=True)]
        agg = sum(x["tokens"] for x in runs[a]) / sum(x["elapsed"] for x in runs[a]) / (
            sum(y["tokens"] for y in runs[b]) / sum(y["elapsed"] for y in runs[b]))
        return {"median": pct(r, 50), "p1": pct(r, 1), "p99": pct(r, 99), "aggregate": round(agg, 4)}

    table = {}
    for name, rs in runs.items():
        table[name] = {"tps_median": pct([r["tps"] for r in rs], 50),
                       "ttft_ms_p50": pct([r["ttft"] * 1000 for r in rs], 50),
                       "ttft_ms_p99": pct([r["ttft"] * 1000 for r in rs], 99),
                       "identical_text_to_" + base: sum(a["text"] == b["text"] for a, b in zip(rs, runs[base],
                                                                                            strict=True)),
                       "engine": health[name].get("engine")}
    out = {"requests": len(jobs), "tokens": args.tokens, "previous": args.previous, "baseline": base,
           "table": table, "process_over_" + base: ratio("process", base),
           "process_over_inproc": ratio("process", "inproc"), "default_over_" + base: ratio("default", base)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "engine_process.json").write_text(json.dumps(out, indent=1) + "\n")
    p = out["process_over_" + base]
    q = out["process_over_inproc"]
    d = out["default_over_" + base]
    md = [f"{len(jobs)} requests x {args.tokens} tokens through `ingate serve` (SSE), temperature 0.8, top_p 0.95, "
          f"same seeds, one request at a time, servers in rotating order; baseline `{base}` = "
          + (f"commit {args.previous}, llama.cpp in process." if base == "previous" else "INGATE_ENGINE_PROCESS=0."),
          "", "| server | tokens/s (median) | TTFT p50 / p99 ms | identical text to the baseline |",
          "|---|---|---|---|"]
    for name, t in table.items():
        md.append(f"| {name} | {t['tps_median']} | {t['ttft_ms_p50']} / {t['ttft_ms_p99']} | "
                  f"{t['identical_text_to_' + base]}/{len(jobs)} |")
    md += ["", f"- engine process over {base}, tokens/s per request: median {p['median']} (p1 {p['p1']}, "
               f"p99 {p['p99']}), aggregate {p['aggregate']}.",
           f"- engine process over in-process (this checkout): median {q['median']} (p1 {q['p1']}), "
           f"aggregate {q['aggregate']}.",
           f"- defaults (threads tuned) over {base} (1 thread): median {d['median']}, aggregate {d['aggregate']}."]
    text = "\n".join(md) + "\n"
    (HERE / "results" / "engine_process.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
