"""Two replicas under load: shared state (Redis sessions, PostgreSQL audit) against each replica's
own (memory sessions, a SQLite audit each), same requests, rounds interleaved.

Each round sends 32 concurrent streams (half of them redacted: a decision to commit and a violation
to count), split over two `ingate serve` replicas of the embedded model, every stream its own
session. Reported: requests/s and tokens/s over the round, and per-request latency p50 and p99.

    .venv/bin/python bench/replicas.py [--rounds 2] [--streams 32] [--tokens 24]

Writes bench/results/replicas.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import redis

from server import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from upstreams import ingate_serve  # noqa: E402  (the tests' way to start a replica and wait for it)

PII = "Repeat exactly this line: Contact John at john.smith@example.com or 415-555-0132."
PARIS = "Write a short paragraph about Paris and its famous tower."
PG = os.environ.get("INGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("INGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def round_(urls: list[str], streams: int, tokens: int, tag: str) -> dict:
    def one(i):
        body = {"model": "m", "messages": [{"role": "user", "content": PII if i % 2 == 0 else PARIS}],
                "stream": True, "max_tokens": tokens, "temperature": 0.0, "seed": 0,
                "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        n = 0
        with httpx.stream("POST", urls[i % len(urls)] + "/v1/chat/completions", json=body, timeout=600,
                          headers={"X-Session-Id": f"{tag}-{i}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    n = json.loads(line[6:])["usage"]["completion_tokens"]
        return time.perf_counter() - t0, n

    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as ex:
        out = list(ex.map(one, range(streams)))
    wall = time.perf_counter() - t0
    lat = [x for x, _ in out]
    return {"wall_s": wall, "latency": lat, "tokens": sum(n for _, n in out)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    prefix, schema = f"ingate-bench-{uuid.uuid4().hex[:8]}", f"ingate_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    pg_url = f"{PG}{'&' if '?' in PG else '?'}options={quote(f'-csearch_path={schema}')}"
    env = dict(os.environ, INGATE_AUDIT_KEY=secrets.token_hex(32))
    results: dict[str, list[dict]] = {"memory + SQLite": [], "Redis + PostgreSQL": []}
    procs: list[subprocess.Popen] = []
    try:
        with tempfile.TemporaryDirectory() as d:
            setups = {"memory + SQLite": [["--audit", str(Path(d) / f"{n}.sqlite3")] for n in "ab"],
                      "Redis + PostgreSQL": [["--sessions", REDIS, "--sessions-prefix", prefix, "--audit", pg_url]] * 2}
            for r in range(args.rounds):
                for name, flags in setups.items():
                    started = [ingate_serve("--max-queue", "64", *f, env=env | {"INGATE_REPLICA": f"r{i}"})
                               for i, f in enumerate(flags)]
                    procs = [p for p, _ in started]
                    res = round_([u for _, u in started], args.streams, args.tokens, f"{r}-{name[:5]}")
                    results[name].append(res)
                    print(f"  round {r + 1} {name}: {res['wall_s']:.1f} s, {res['tokens']} tokens", flush=True)
                    for p in procs:
                        p.terminate()
                        p.wait(60)
                    procs = []
    finally:
        for p in procs:
            p.kill()
        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
        rc = redis.Redis.from_url(REDIS)
        for k in rc.scan_iter(f"{prefix}:*"):
            rc.delete(k)
    out = {}
    for name, rounds in results.items():
        lat = [x for r in rounds for x in r["latency"]]
        wall = sum(r["wall_s"] for r in rounds)
        out[name] = {"requests_per_s": round(sum(len(r["latency"]) for r in rounds) / wall, 2),
                     "tokens_per_s": round(sum(r["tokens"] for r in rounds) / wall, 1),
                     "latency_s_p50": round(pct(lat, 50), 2), "latency_s_p99": round(pct(lat, 99), 2)}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "replicas.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| two replicas, shared state | requests/s | tokens/s | latency p50 / p99 |", "|---|---|---|---|"]
    for name, o in out.items():
        lines.append(f"| {name} | {o['requests_per_s']} | {o['tokens_per_s']} | {o['latency_s_p50']} / "
                     f"{o['latency_s_p99']} s |")
    lines.append(f"\n{args.rounds} rounds each, interleaved; {args.streams} concurrent streams of up to {args.tokens} "
                 "tokens per round, half of them redacted, each its own session.\n")
    (HERE / "results" / "replicas.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
