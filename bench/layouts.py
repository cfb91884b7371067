"""What each llama.cpp weight layout costs here: prompt evaluation and decode, 1 and 2 threads,
and what `auto` picks (INGATE_LLAMA_REPACK, INGATE_THREADS).

Every configuration is loaded at once, each in its own process (a layout that crashes on this CPU
is reported as "died from SIGILL" instead of ending the benchmark), and asked in turn for short
blocks of decoding and prompt evaluation, in rotating order: on this shared, noisy machine the
load changes within seconds, and fine interleaving spreads it over all configurations alike.

    .venv/bin/python bench/layouts.py [--rounds 16] [--block 32] [--long 1000] [--quick]

Writes bench/results/layouts.json and bench/results/layouts.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ingate.engines.base import exit_reason

HERE = Path(__file__).resolve().parent
SHORT = "Write a short paragraph about Paris and its famous tower."
LONG_TEXT = ("The lighthouse keeper kept a log of every ship that passed, the weather, the state of the lamp, "
             "and the small events of the island: a seal on the rocks, a storm from the west, a letter. ")


def worker(lay: str, threads: int | None, long_tokens: int) -> None:
    """One configuration, kept loaded; measures what the parent asks for on stdin, one JSON line
    per answer on stdout (run by the parent as a child process)."""
    from ingate.engines.llamacpp import LlamaCppEngine

    t0 = time.perf_counter()
    eng = LlamaCppEngine(layout=lay, n_threads=threads)
    load_s = time.perf_counter() - t0
    short = eng.chat_prompt([{"role": "user", "content": SHORT}])
    long = (eng.tokenize(LONG_TEXT * (long_tokens // 30 + 2), add_bos=True))[:long_tokens]
    print(json.dumps({"load_s": load_s, "short_tokens": len(short), "long_tokens": len(long)}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "prompt":
            prompt = long if arg == "long" else short
            t = time.perf_counter()
            eng.start(prompt)
            eng.step()
            print(json.dumps({"ms": (time.perf_counter() - t) * 1000}), flush=True)
        elif cmd == "decode":
            eng.start(short)
            x = eng.step()
            out = []
            for _ in range(int(arg)):
                t = time.perf_counter()
                eng.accept(int(np.argmax(x)))
                x = eng.step()
                out.append((time.perf_counter() - t) * 1000)
            print(json.dumps({"ms": out, "threads": eng.info()["threads"]}), flush=True)
        else:
            break
    eng.close()


class Config:
    """A worker process for one (layout, threads); `crashed` once it has died."""

    def __init__(self, lay: str, threads: int | None, long_tokens: int):
        self.name = f"{lay}/{threads or 'auto'}"
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", lay, str(threads or "auto"),
                                      str(long_tokens)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.crashed: str | None = None
        self.meta = self._read()
        self.decode_ms: list[list[float]] = []
        self.short_ms: list[float] = []
        self.long_ms: list[float] = []
        self.threads: dict = {}

    def _read(self) -> dict | None:
        line = self.proc.stdout.readline()
        if line:
            return json.loads(line)
        rc = self.proc.wait()
        self.crashed = exit_reason(rc)
        return None

    def ask(self, cmd: str) -> dict | None:
        if self.crashed:
            return None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if not self.crashed:
            self.proc.stdin.close()
            self.proc.wait(30)


def summarize(c: Config) -> dict:
    if c.crashed or not c.decode_ms:
        return {"crashed": c.crashed or "no measurement"}
    per_block = [1000 / float(np.median(b)) for b in c.decode_ms]
    all_ms = np.concatenate(c.decode_ms)
    return {"blocks": len(c.decode_ms), "decode_tps": round(float(np.median(per_block)), 1),
            "decode_ms_p50": round(float(np.median(all_ms)), 2),
            "decode_ms_p99": round(float(np.percentile(all_ms, 99)), 2),
            "short_ms": round(float(np.median(c.short_ms)), 1), "long_ms": round(float(np.median(c.long_ms)), 1),
            "short_tokens": c.meta["short_tokens"], "long_tokens": c.meta["long_tokens"],
            "load_s": round(c.meta["load_s"], 2), "threads_final": c.threads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=24, help="rounds; each decodes one block per configuration")
    ap.add_argument("--block", type=int, default=32, help="decode steps per block")
    ap.add_argument("--long", type=int, default=1000, help="tokens of the long prompt")
    ap.add_argument("--long-rounds", type=int, default=3, help="rounds that also time the long prompt")
    ap.add_argument("--quick", action="store_true", help="4 rounds of 16 steps, a 300-token prompt")
    ap.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(HERE / "results" / "layouts"))
    args = ap.parse_args()
    if args.worker:
        lay, th, lng = args.worker
        worker(lay, None if th == "auto" else int(th), int(lng))
        return 0
    if args.quick:
        args.rounds, args.block, args.long, args.long_rounds = 4, 16, 300, 1

    from ingate.engines import layout
    from ingate.engines.llamacpp import default_model_path

    os.environ.pop("INGATE_LLAMA_REPACK", None)
    choice = layout.choose(default_model_path())
    print(f"layouts: auto picks {choice.layout!r} ({choice.reason})", file=sys.stderr)
    specs = [(lay, th) for lay in ("on", "split", "off") for th in (1, 2)] + [(choice.layout, None)]
    configs = []
    for lay, th in specs:
        configs.append(Config(lay, th, args.long))
        print(f"layouts: loaded {configs[-1].name}" + (f" ({configs[-1].crashed})"
                                                        if configs[-1].crashed else ""), file=sys.stderr)
    for c in configs:
        c.ask("decode 16")  # warm up: caches, thread pools, the tuner's first measurements
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[:r % len(configs)]
        print(f"layouts: round {r + 1}/{args.rounds}", file=sys.stderr, flush=True)
        for c in order:
            got = c.ask(f"decode {args.block}")
            if got is not None:
                c.decode_ms.append(got["ms"])
                c.threads = got["threads"]
            got = c.ask("prompt short")
            if got is not None:
                c.short_ms.append(got["ms"])
            if r < args.long_rounds:
                got = c.ask("prompt long")
                if got is not None:
                    c.long_ms.append(got["ms"])
    for c in configs:
        c.close()
    table = {c.name: summarize(c) for c in configs}

    def best_decode(threads: int) -> str:
        ok = {n: t["decode_tps"] for n, t in table.items() if n.endswith(f"/{threads}") and "crashed" not in t}
        return max(ok, key=ok.get)

    def paired(a: Config, b: Config) -> float:
        """Median over rounds of a's block tokens/s over b's in the same round (noise hits both)."""
        r = [float(np.median(y)) / float(np.median(x)) for x, y in zip(a.decode_ms, b.decode_ms, strict=False)]
        return round(float(np.median(r)), 3)

    by_name = {c.name: c for c in configs}
    targets = {}
    for th in (1, 2):
        fastest = best_decode(th)
        targets[f"fastest_{th}t"] = fastest
        targets[f"decode_auto_over_fastest_{th}t"] = paired(by_name[f"{choice.layout}/{th}"], by_name[fastest])
        targets[f"long_prompt_auto_over_off_{th}t"] = round(table[f"{choice.layout}/{th}"]["long_ms"]
                                                            / table[f"off/{th}"]["long_ms"], 3)
    out = {"machine": {"cpu": layout.cpu_info(), "platform": platform.platform(), "llama": layout.llama_build()},
           "auto": choice.to_dict(), "rounds": args.rounds, "block": args.block, "table": table,
           "targets": targets, "raw": {c.name: {"decode_ms": c.decode_ms, "short_ms": c.short_ms,
                                                "long_ms": c.long_ms} for c in configs}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    md = [f"CPU {out['machine']['cpu']['model']} ({out['machine']['cpu']['cores']} cores; "
          f"{' '.join(f for f in out['machine']['cpu']['flags'] if f.startswith('amx')) or 'no AMX'}); "
          f"llama-cpp-python {out['machine']['llama']['version']} (build {out['machine']['llama']['libs']}); "
          f"{args.rounds} rounds of a {args.block}-token decode block per configuration, all loaded at once, "
          f"rotating order. auto picks **{choice.layout}**: {choice.reason}.", "",
          "| layout / threads | decode tokens/s (median) | ms per token p50 / p99 | prompt of "
          f"{table['off/1'].get('short_tokens', '?')} tokens, ms | prompt of {table['off/1'].get('long_tokens', '?')} "
          "tokens, ms | load, s |", "|---|---|---|---|---|---|"]
    for name, t in table.items():
        if "crashed" in t:
            md.append(f"| {name} | {t['crashed']} | | | | |")
        else:
            extra = f" (tuner ended at {t['threads_final'].get('current')})" if name.endswith("/auto") else ""
            md.append(f"| {name}{extra} | {t['decode_tps']} | {t['decode_ms_p50']} / {t['decode_ms_p99']} | "
                      f"{t['short_ms']} | {t['long_ms']} | {t['load_s']} |")
    md += ["", "Targets (decode: median over rounds of the paired per-round ratio): "
           + ", ".join(f"{k} {v}" for k, v in targets.items())]
    Path(args.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
