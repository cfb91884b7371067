"""What the durable audit costs: one decision batch and one request row, committed, on each store.

The promise (a decision is committed before its text is released) puts one commit on the path of
every token that carries decisions, and one more per request. Measured here on SQLite (WAL,
synchronous=FULL) and on PostgreSQL (psycopg 3, a pool, synchronous_commit as the server sets it),
N commits each, interleaved.

    .venv/bin/python bench/audit.py [--n 400] [--postgres postgresql://postgres@127.0.0.1:5432/test]

Writes bench/results/audit.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psycopg

from ingate.drivers.base import Result
from ingate.gate.decision import Action, Decision
from ingate.store.audit import open_audit

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--postgres", default=os.environ.get("INGATE_TEST_POSTGRES",
                                                        "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    os.environ.setdefault("INGATE_AUDIT_KEY", secrets.token_hex(32))
    schema = f"ingate_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in args.postgres else "?"
    try:
        with tempfile.TemporaryDirectory() as d:
            logs = {"sqlite": open_audit(Path(d) / "audit.sqlite3"),
                    "postgresql": open_audit(f"{args.postgres}{sep}options={quote(f'-csearch_path={schema}')}")}
            one = [Decision("pii", Action.REDACT, 3, 12, b"415-555-0132", "redacted one phone")]
            res = Result(text="x", finish_reason="stop", decisions=one, completion_tokens=64, elapsed_s=1.0)
            t: dict[str, dict[str, list[float]]] = {k: {"decision": [], "request": []} for k in logs}
            for i in range(args.n):
                for name, log in logs.items():
                    s = time.perf_counter()
                    log.record(f"r{i}", "default", one)
                    t[name]["decision"].append(time.perf_counter() - s)
                    s = time.perf_counter()
                    log.record_request(f"r{i}", "default", res)
                    t[name]["request"].append(time.perf_counter() - s)
            for log in logs.values():
                log.close()
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as con:
            con.execute(f"DROP SCHEMA {schema} CASCADE")
    out = {name: {kind: {"p50_ms": round(float(np.percentile(v, 50)) * 1000, 3),
                         "p99_ms": round(float(np.percentile(v, 99)) * 1000, 3)} for kind, v in d.items()}
           for name, d in t.items()}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "audit.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["| store | a decision batch committed, p50 / p99 | a request row, p50 / p99 |", "|---|---|---|"]
    for name, d in out.items():
        lines.append(f"| {name} | {d['decision']['p50_ms']} / {d['decision']['p99_ms']} ms | "
                     f"{d['request']['p50_ms']} / {d['request']['p99_ms']} ms |")
    lines.append(f"\n{args.n} commits of each, interleaved.\n")
    (HERE / "results" / "audit.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
