"""Structured output's cost: the schema alone, the schema under the default policy, and neither.

For each of the 60 schemas in tests/data/structured/schemas.json, greedy and at one sampled seed,
the same prompt and seed run three ways back to back, in a rotating order so that drift on this
shared machine hits each alike:
  neither   no schema, no policy (ingate's ungoverned loop)
  schema    the schema's token mask (llguidance) and nothing else
  governed  the schema and the default policy (PII prevented inside the JSON, the ban list)
Per run: tokens/s (completion tokens over wall time, prefill included) and decode time per token
(after the first token, so prefill is left out). Ratios are per prompt (governed over schema),
quoted as median with p1/p99. Also: the structure's mask per step, the
grammar's compile per request, and whether every output validated.

    .venv/bin/python bench/structured.py [--quick]

Writes bench/results/structured.json and bench/results/structured.md (quoted by docs/structured-output.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jsonschema

from ingate.drivers.base import GenerationParams
from ingate.policy import NONE_POLICY, load_policy
from ingate.runtime import Runtime
from ingate.sampling import SamplingParams
from ingate.structure import from_response_format

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import pct, summarize_ratio  # noqa: E402

RESULTS = HERE / "results"
SCHEMAS = HERE.parent / "tests" / "data" / "structured" / "schemas.json"
CONFIGS = ("neither", "schema", "governed")
SETTINGS = ((0.0, 0), (0.8, 7))  # greedy, and one sampled seed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 schemas, greedy only")
    ap.add_argument("--tokens", type=int, default=200, help="max_tokens per run")
    args = ap.parse_args()
    rows = json.loads(SCHEMAS.read_text())
    settings = SETTINGS
    if args.quick:
        rows, settings = rows[:12], SETTINGS[:1]
    rt = Runtime.load(use_audit=False)
    default = load_policy(None)
    rt.prepare(default)
    tps: dict[str, list[float]] = {c: [] for c in CONFIGS}
    decode_ms: dict[str, list[float]] = {c: [] for c in CONFIGS}
    ratios: list[float] = []
    compile_ms: list[float] = []
    mask_us: list[float] = []
    ends: dict[str, dict[str, int]] = {c: {} for c in CONFIGS[1:]}
    invalid: list[str] = []
    n = len(rows) * len(settings)
    k = 0
    for temperature, seed in settings:
        for row in rows:
            structure = from_response_format({"type": "json_schema", "json_schema": {"name": row["name"],
                                                                                   "schema": row["schema"]}})
            t = time.perf_counter()
            m = rt.matcher(structure)
            compile_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            m.forbidden()
            mask_us.append((time.perf_counter() - t) * 1e6)  # the first mask: the one a request waits for
            messages = [{"role": "user", "content": row["prompt"]}]
            params = GenerationParams(max_tokens=args.tokens, sampling=SamplingParams(temperature=temperature,
                                                                                      seed=seed))
            got: dict[str, float] = {}
            for c in CONFIGS[k % 3:] + CONFIGS[:k % 3]:  # rotate the order
                pol = default if c == "governed" else NONE_POLICY
                res = rt.run(messages, pol, params, structure=None if c == "neither" else structure)
                got[c] = res.completion_tokens / res.elapsed_s
                if res.completion_tokens > 1 and res.ttft_s is not None:
                    decode_ms[c].append((res.elapsed_s - res.ttft_s) / (res.completion_tokens - 1) * 1e3)
                if c != "neither":
                    ends[c][res.finish_reason] = ends[c].get(res.finish_reason, 0) + 1
                    if res.finish_reason == "stop":
                        try:
                            jsonschema.validate(json.loads(res.text), row["schema"])
                        except (ValueError, jsonschema.ValidationError) as e:
                            invalid.append(f"{c} {row['name']}: {str(e)[:80]}")
            for c in CONFIGS:
                tps[c].append(got[c])
            ratios.append(got["governed"] / got["schema"])
            k += 1
            print(f"\r{k}/{n} runs of 3", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    per_step = _mask_per_step(rt, rows[:12])
    out = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "schemas": len(rows), "settings": [list(s) for s in settings], "max_tokens": args.tokens,
        "tokens_per_s": {c: {"median": round(pct(v, 50), 1), "p1": round(pct(v, 1), 1), "p99": round(pct(v, 99), 1)}
                         for c, v in tps.items()},
        "decode_ms_per_token": {c: {"median": round(pct(v, 50), 3), "p99": round(pct(v, 99), 3), "n": len(v)}
                                for c, v in decode_ms.items()},
        "governed_over_schema": summarize_ratio(ratios),
        "schema_over_neither": summarize_ratio([s / x for s, x in zip(tps["schema"], tps["neither"], strict=True)]),
        "grammar_compile_ms": {"p50": round(pct(compile_ms, 50), 2), "p99": round(pct(compile_ms, 99), 2)},
        "first_mask_us": {"p50": round(pct(mask_us, 50), 1), "p99": round(pct(mask_us, 99), 1)},
        "mask_per_step_us": per_step,
        "finish": ends, "invalid": invalid,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "structured.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / "structured.md").write_text(render(out))
    print(render(out))
    return 1 if invalid else 0


def _mask_per_step(rt: Runtime, rows: list[dict]) -> dict:
    """The matcher's work at every step of a greedy output: the mask (llguidance's bitmask, as a
    bool per token) and consuming the token."""

    us: list[float] = []
    for row in rows:
        structure = from_response_format({"type": "json_schema", "json_schema": {"name": row["name"],
                                                                               "schema": row["schema"]}})
        res = rt.run([{"role": "user", "content": row["prompt"]}], NONE_POLICY,
                     GenerationParams(max_tokens=120, sampling=SamplingParams(temperature=0.0)), structure=structure)
        m = rt.matcher(structure)
        for token in rt.engine.tokenize(res.text):
            t = time.perf_counter()
            forbidden = m.forbidden()
            if forbidden[token]:  # the text re-tokenized differs from the tokens drawn: stop here
                break
            m.consume(token)
            us.append((time.perf_counter() - t) * 1e6)
    return {"steps": len(us), "p50": round(pct(us, 50), 1), "p99": round(pct(us, 99), 1)}


def render(out: dict) -> str:
    t, r, d = out["tokens_per_s"], out["governed_over_schema"], out["decode_ms_per_token"]
    lines = [
        "# Structured output: cost (bench/structured.py)",
        "",
        f"{out['schemas']} schemas x {len(out['settings'])} settings, max_tokens {out['max_tokens']}; each prompt and "
        "seed run three ways back to back, rotating the order.",
        "",
        "| configuration | tokens/s median | p1 | p99 | decode ms/token median | p99 |",
        "|---|---|---|---|---|---|",
        *(f"| {c} | {t[c]['median']} | {t[c]['p1']} | {t[c]['p99']} | {d[c]['median']} | {d[c]['p99']} |"
          for c in CONFIGS),
        "",
        f"Governed schema over schema alone, per prompt: median **{r['median']}** (p1 {r['p1']}, p99 {r['p99']}); "
        f"target >= 0.95. Schema alone over neither: median {out['schema_over_neither']['median']} (not the mask's "
        "cost alone: without a schema the model writes free text to max_tokens, so its prefill is spread over "
        "more tokens; a JSON answer here is about 35 tokens).",
        "",
        f"Matcher work per step (llguidance's mask and consume): p50 {out['mask_per_step_us']['p50']} us, p99 "
        f"{out['mask_per_step_us']['p99']} us over {out['mask_per_step_us']['steps']} steps. Grammar compile per "
        f"request: p50 {out['grammar_compile_ms']['p50']} ms, p99 {out['grammar_compile_ms']['p99']} ms; first "
        f"mask p50 {out['first_mask_us']['p50']} us, p99 {out['first_mask_us']['p99']} us.",
        "",
        f"Finish reasons: {json.dumps(out['finish'])}. Outputs that ended `stop` and did not validate: "
        f"{len(out['invalid'])}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
