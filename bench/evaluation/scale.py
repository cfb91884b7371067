"""Section 7, scale: what the gate costs per token as the rules, the output and the clients grow.

Gate cost per token is `Result.gate_us` from `ingate.drivers.full.generate`: the time each step spends in
the gate (admission, release, masks when asked for), sampling and decoding excluded. Every number
is quoted as median and p99 over all the tokens of a configuration, with the sample size, next
to decode throughput measured side by side without a gate (the same prompts and seeds,
`ignore_eos`, configurations interleaved in a rotating order so that drift on a shared machine
hits them alike).

- Rules: `prevent` on 10, 100, 1,000 and 10,000 made-up company names (`bench/run.py`'s
  `thousand_phrases`), one rule, or, when one rule is refused as too complex (10,000 are), rules
  of half as many each. Also what each costs once: parse and compile time, the warm-up of its
  first mask rows, automaton sizes (DFA and search/mask states, the search tables' bytes), the
  process's resident memory growth, and building a gate per request. Ordinary text never names
  these companies, so the rule never fires: this is the gate's standing cost per token, not
  the cost of acting.
- Output length: per seed, one 2,048-token generation under the 1,000 names and one ungoverned.
  The rule never firing, a seed gives the same tokens at any max_tokens, so 128, 256, ... are the
  long run's prefixes: gate time over the first L tokens, and decode tokens/s from per-step
  timestamps (`StepClock`), also by position bucket.
- Concurrency: a real `ingate serve` on loopback with the 1,000 names and `policy: none` loaded;
  1, 4 and 8 streaming clients, each level run governed and ungoverned on the same requests.
  The server's gate time per token comes from each response's governance report (its p50) and
  the Prometheus histogram `ingate_gate_microseconds` (p50/p99 interpolated within its buckets);
  CPU seconds of the clients, the HTTP process and the engine process come from /proc.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from evaluation.common import BENCH, Ctx, dist, ingate_server, pct

HEADING = "## 7. Scale: gate cost per token"
MIN_PER_RULE = 500  # splitting a refused ban list stops here (the error is raised)
TEMPERATURE, TOP_P = 0.8, 0.95
LONG_PROMPT = "Write a long, detailed essay about the history of Paris, with many sections."


# ---- settings ------------------------------------------------------------------------------------
def settings(ctx: Ctx) -> dict[str, Any]:
    """Sample sizes by run size: full about 7 minutes on 2 idle cores, quick about 2, smoke under one
    (the server's start is most of it)."""
    return {
        "rule_counts": ctx.pick([10, 100, 1000, 10000], [10, 100, 1000, 10000], [10, 100]),
        "rule_prompts": ctx.pick(5, 3, 1),
        "rule_tokens": ctx.pick(128, 32, 16),
        "lengths": ctx.pick([128, 256, 512, 1024, 2048], [128, 256], [16, 32]),
        "length_seeds": ctx.pick(2, 1, 1),  # per seed: one run of the longest length, governed and not
        "levels": ctx.pick([1, 4, 8], [1, 8], [1, 2]),
        "server_requests": ctx.pick(8, 8, 2),
        "server_tokens": ctx.pick(48, 16, 8),
        "server_phrases": ctx.pick(1000, 100, 100),
        "warmup_tokens": ctx.pick(64, 32, 8),  # the engine tunes its threads while it decodes: let it settle
    }


def prompts() -> list[str]:
    return [ln.strip() for ln in (BENCH / "prompts.txt").read_text().splitlines() if ln.strip()]


def phrases(n: int) -> list[str]:
    """n distinct made-up company names (`bench/run.py`'s generator has room for ~80,000)."""
    from run import thousand_phrases

    out = thousand_phrases(n)
    assert len(set(out)) == n, f"thousand_phrases made {len(set(out))} distinct names, not {n}"
    return out


def policy_yaml(name: str, names: Sequence[str], per_rule: int | None = None) -> str:
    """One `prevent` rule of `names`, or rules of `per_rule` names each."""
    size = per_rule or len(names)
    rules = []
    for i in range(0, len(names), size):
        items = "".join(f"        - {json.dumps(p)}\n" for p in names[i:i + size])
        rules.append(f"  - id: names{i // size}\n    forbid:\n      phrases:\n{items}    action: prevent\n")
    return f"version: 1\nname: {name}\nrules:\n" + "".join(rules)


def gate_dist(xs: Iterable[float]) -> dict[str, float]:
    """`dist` of gate µs per token, and how many of the steps took over 1 ms."""
    a = list(xs)
    return dist(a) | {"over_1ms": sum(x > 1000 for x in a)}


def rss_mb() -> float:
    """This process's resident memory (Linux /proc), MB."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


# ---- the rules: compile once, then cost per token -------------------------------------------------
def build(rt: Any, n: int) -> tuple[Any, dict[str, Any]]:
    """The policy of n names, compiled and warmed, and what that cost once. One rule of all of them
    if it compiles; when the automaton is refused as too complex, rules of half as many names each
    (then a quarter, ...), as the error advises. `refused` keeps each failed try and its time."""
    from ingate.gate.compile import compile_policy
    from ingate.policy import PolicyError, parse_policy

    names = phrases(n)
    refused: list[dict[str, Any]] = []
    per_rule = n
    while True:
        rss0, t0 = rss_mb(), time.perf_counter()
        try:
            pol = parse_policy(policy_yaml(f"scale-{n}", names, per_rule), source=f"<eval:scale-{n}>")
            t1 = time.perf_counter()
            compiled = compile_policy(pol)
        except PolicyError as e:
            if per_rule <= MIN_PER_RULE:
                raise
            refused.append({"phrases_per_rule": per_rule, "seconds": round(time.perf_counter() - t0, 2),
                            "error": str(e)[:300]})
            per_rule = -(-per_rule // 2)
            continue
        t2 = time.perf_counter()
        rt.prepare(pol)
        t3 = time.perf_counter()
        return pol, {"phrases": n, "rules": len(pol.rules), "phrases_per_rule": per_rule, "refused": refused,
                     "parse_s": round(t1 - t0, 3), "compile_s": round(t2 - t1, 3), "warm_s": round(t3 - t2, 3),
                     "rss_growth_mb": round(rss_mb() - rss0, 1), **automata(compiled, rt.table)}


def automata(compiled: Any, table: Any) -> dict[str, Any]:
    """Sizes of what a compiled policy holds: anchored DFA states, search (mask) states, the search
    tables' bytes, and the mask rows cached so far (one bool per vocabulary token each)."""
    dets = compiled.detectors
    rows = compiled.masks_for(table).cached_rows
    row_bytes = table.size
    return {"dfa_states": sum(len(d.dfa.trans) for d in dets),
            "mask_states": sum(len(d.search.accept) for d in dets if d.rolls_back),
            "search_table_mb": round(sum(d.search.table.nbytes for d in dets if d.rolls_back) / 2**20, 1),
            "mask_rows_cached": rows, "mask_rows_mb": round(rows * row_bytes / 2**20, 2)}


def gen(rt: Any, prompt: list[int], policy: Any, params: Any) -> Any:
    """One generation, governed by a fresh gate for `policy` (None: ungoverned)."""
    from ingate.drivers.full import generate
    from ingate.gate.compile import compile_policy
    from ingate.gate.gate import Gate

    gate = None if policy is None else Gate(compile_policy(policy), rt.table)
    return generate(rt.engine, prompt, params, gate)


def params(tokens: int, seed: int) -> Any:
    from ingate.drivers.base import GenerationParams
    from ingate.sampling import SamplingParams

    return GenerationParams(max_tokens=tokens, ignore_eos=True,
                            sampling=SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, seed=seed))


def tps(r: Any) -> float:
    return r.completion_tokens / r.elapsed_s if r.elapsed_s > 0 else float("nan")


def gate_share(runs: list) -> float:
    """The gate's own time as a share of the runs' generation time: what it can cost in tokens/s."""
    return round(sum(sum(r.gate_us) for r in runs) / 1e6 / sum(r.elapsed_s for r in runs), 5)


def versus(gov: list, base: list) -> dict[str, Any]:
    """Governed against ungoverned runs, pairwise (same prompt and seed): tokens/s ratios."""
    ratios = [tps(a) / tps(b) for a, b in zip(gov, base, strict=True)]
    agg = (sum(r.completion_tokens for r in gov) / sum(r.elapsed_s for r in gov)) \
        / (sum(r.completion_tokens for r in base) / sum(r.elapsed_s for r in base))
    return {"tps_ratio": {"n": len(ratios), "median": pct(ratios, 50), "min": round(min(ratios), 4),
                          "max": round(max(ratios), 4)},
            "aggregate_tps_ratio": round(agg, 4), "tps_governed": pct([tps(r) for r in gov], 50),
            "tps_ungoverned": pct([tps(r) for r in base], 50), "gate_share": gate_share(gov)}


def rules_sweep(ctx: Ctx, s: dict[str, Any]) -> tuple[dict[str, Any], dict[int, Any]]:
    """Compile each rule count, then run every prompt under each and ungoverned, rotating the order."""
    from ingate.gate.compile import compile_policy
    from ingate.policy import parse_policy

    rt = ctx.rt
    # the folded vocabulary views are built once per process and fold, shared by every policy: pay
    # for them here so that the first rule count is not charged for them
    rt.prepare(parse_policy(policy_yaml("scale-warm", ["Warm Up Corp"]), source="<eval:scale-warm>"))
    policies: dict[int, Any] = {}
    cost: list[dict[str, Any]] = []
    for n in ctx.progress(s["rule_counts"], "scale: compile"):
        policies[n], c = build(rt, n)
        cost.append(c)
    configs: list[int | None] = [None, *s["rule_counts"]]
    runs: dict[int | None, list] = {k: [] for k in configs}
    texts = prompts()
    chats = [rt.engine.chat_prompt([{"role": "user", "content": texts[i % len(texts)]}])
             for i in range(s["rule_prompts"])]
    gen(rt, chats[0], None, params(s["warmup_tokens"], 0))  # warm up
    # prompt i runs every configuration, the order rotated by one for each prompt
    schedule = [(i, configs[(i + j) % len(configs)]) for i in range(len(chats)) for j in range(len(configs))]
    for i, k in ctx.progress(schedule, "scale: rules"):
        runs[k].append(gen(rt, chats[i], None if k is None else policies[k], params(s["rule_tokens"], i)))
    gate_new = {n: gate_new_us(rt, compile_policy(policies[n])) for n in s["rule_counts"]}
    rows = [c | {"gate_us": gate_dist(u for r in runs[c["phrases"]] for u in r.gate_us),
                 "gate_new_us": gate_new[c["phrases"]],
                 "acted": sum(bool(r.decisions) or r.rollbacks > 0 for r in runs[c["phrases"]])}
            | versus(runs[c["phrases"]], runs[None]) for c in cost]
    return {"prompts": s["rule_prompts"], "tokens": s["rule_tokens"], "rows": rows}, policies


def gate_new_us(rt: Any, compiled: Any, reps: int = 20) -> float:
    """What a fresh gate for one request costs to build (µs, median of `reps`)."""
    from ingate.gate.gate import Gate

    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        Gate(compiled, rt.table)
        ts.append((time.perf_counter() - t) * 1e6)
    return pct(ts, 50)


# ---- output length ---------------------------------------------------------------------------------
class StepClock:
    """An engine that keeps the time each `step` begins: stamps[i] is when token i's decode began,
    i.e. once i tokens were generated and governed."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.stamps: list[float] = []

    def step(self) -> Any:
        self.stamps.append(time.perf_counter())
        return self._engine.step()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def timed_gen(rt: Any, prompt: list[int], policy: Any, tokens: int, seed: int) -> tuple[Any, list[float]]:
    """A generation and, for i = 0..tokens, the seconds it took to reach i tokens."""
    from ingate.drivers.full import generate
    from ingate.gate.compile import compile_policy
    from ingate.gate.gate import Gate

    gate = None if policy is None else Gate(compile_policy(policy), rt.table)
    clock = StepClock(rt.engine)
    t0 = time.perf_counter()
    r = generate(clock, prompt, params(tokens, seed), gate)  # type: ignore[arg-type]  # an Engine by delegation
    t_end = time.perf_counter()
    return r, [0.0] + [t - t0 for t in clock.stamps[1:r.completion_tokens]] + [t_end - t0]


def length_sweep(ctx: Ctx, s: dict[str, Any], policy: Any, n_phrases: int) -> dict[str, Any]:
    """One generation of the longest length per seed and side (governed, ungoverned, alternating
    which goes first). The same seed gives the same tokens whatever the length asked for (the rule
    never fires), so the shorter lengths are the longest run's prefixes: a length's gate cost is
    that of its first L tokens, its decode tokens/s that from the first token to the L-th."""
    rt = ctx.rt
    prompt = rt.engine.chat_prompt([{"role": "user", "content": LONG_PROMPT}])
    longest = max(s["lengths"])
    gov: list[tuple[Any, list[float]]] = []
    base: list[tuple[Any, list[float]]] = []
    for seed in ctx.progress(range(s["length_seeds"]), "scale: length"):
        for side, pol in ((gov, policy), (base, None))[:: 1 if seed % 2 == 0 else -1]:
            side.append(timed_gen(rt, prompt, pol, longest, 100 + seed))

    def rate(runs: list, start: int, end: int) -> list[float]:
        start = max(start, 1)  # from the first token on: the prompt's evaluation is not decoding
        return [(end - start) / (at[end] - at[start]) for _, at in runs]

    rows, edges = [], [0, *s["lengths"]]
    for L in s["lengths"]:
        g, u = rate(gov, 0, L), rate(base, 0, L)
        rows.append({"tokens": L, "gate_us": gate_dist(x for r, _ in gov for x in r.gate_us[:L]),
                     "tps_governed": pct(g, 50), "tps_ungoverned": pct(u, 50),
                     "tps_ratio": {"n": len(g), "median": pct([x / y for x, y in zip(g, u, strict=True)], 50)}})
    buckets = []
    for a, b in zip(edges, edges[1:], strict=False):
        g, u = rate(gov, a, b), rate(base, a, b)
        buckets.append({"from": a, "to": b, "gate_us": gate_dist(x for r, _ in gov for x in r.gate_us[a:b]),
                        "tps_governed": pct(g, 50), "tps_ungoverned": pct(u, 50),
                        "tps_ratio": pct([x / y for x, y in zip(g, u, strict=True)], 50)})
    return {"phrases": n_phrases, "seeds": s["length_seeds"], "longest": longest, "rows": rows,
            "by_position": buckets, "acted": sum(bool(r.decisions) or r.rollbacks > 0 for r, _ in gov),
            "gate_share": gate_share([r for r, _ in gov]),
            "same_text": sum(a.text == b.text for (a, _), (b, _) in zip(gov, base, strict=True))}


# ---- concurrency, through a real server -------------------------------------------------------------
@contextmanager
def server(ctx: Ctx, policy_text: str) -> Iterator[tuple[str, float, int]]:
    """`ingate serve` on loopback with `policy_text` (the default) and `none` loaded: its url, the
    perf_counter time it was started at, and its process id."""
    tmp = Path(tempfile.mkdtemp(prefix="ingate-scale-", dir=ctx.tmp))
    (tmp / "policy.yaml").write_text(policy_text)
    flags = ["--policy", str(tmp / "policy.yaml"), "--policy", "none", "--max-queue", "64"]
    t0 = time.perf_counter()
    try:
        with (tmp / "serve.log").open("wb") as log, \
                ingate_server(flags, log, env=dict(os.environ, INGATE_AUDIT=str(tmp / "audit.sqlite3"))) as (url, proc):
            yield url, t0, proc.pid
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # its policy, log and audit: a failure quoted the log already


def stream(url: str, prompt: str, seed: int, tokens: int, policy: str) -> dict[str, Any]:
    """One streaming chat completion: tokens, time, time to first text, the governance report."""
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": TEMPERATURE, "top_p": TOP_P, "seed": seed, "stream": True, "policy": policy,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, usage, governance = None, None, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            usage = ev.get("usage") or usage
            governance = ev.get("governance") or governance
            if ttft is None and any(ch["delta"].get("content") for ch in ev.get("choices", [])):
                ttft = time.perf_counter() - t0
    elapsed = time.perf_counter() - t0
    n = usage["completion_tokens"] if usage else 0
    return {"tokens": n, "elapsed": elapsed, "ttft": ttft if ttft is not None else elapsed,
            "gate_us_p50": (governance or {}).get("gate_us_p50")}


def gate_histogram(url: str) -> dict[float, float]:
    """`ingate_gate_microseconds` from /metrics: cumulative count per upper bound."""
    out: dict[float, float] = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("ingate_gate_microseconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def hist_quantile(before: dict[float, float], after: dict[float, float], q: float) -> dict[str, Any]:
    """Prometheus's histogram_quantile over the observations between two scrapes: `value` linear
    within the bucket where the quantile falls, and that bucket's bounds (`hi` None: +Inf)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    if not cum or cum[-1] <= 0:
        return {"value": float("nan"), "lo": None, "hi": None}
    rank, lo, below = q * cum[-1], 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            if b == float("inf"):
                return {"value": lo, "lo": lo, "hi": None}
            return {"value": round(lo + (b - lo) * (rank - below) / max(c - below, 1e-9), 1), "lo": lo, "hi": b}
        lo, below = b, c
    return {"value": lo, "lo": lo, "hi": None}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def batch(url: str, jobs: list[tuple[str, int]], tokens: int, c: int, policy: str,
          pids: dict[str, int]) -> dict[str, Any]:
    """`jobs` sent by `c` client threads at once; aggregate and per-request figures, and the CPU
    seconds each process (`pids`: the clients, the server's HTTP process, the engine) used meanwhile."""
    before = gate_histogram(url)
    cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=c) as pool:
        res = list(pool.map(lambda j: stream(url, j[0], j[1], tokens, policy), jobs))
    wall = time.perf_counter() - t0
    cpu = {k: round(cpu_s(pid) - cpu0[k], 2) for k, pid in pids.items()}
    after = gate_histogram(url)
    n_obs = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    return {"requests": len(res), "tokens": sum(r["tokens"] for r in res), "wall_s": round(wall, 3),
            "aggregate_tps": round(sum(r["tokens"] for r in res) / wall, 2),
            "per_request_tps_p50": pct([r["tokens"] / r["elapsed"] for r in res], 50),
            "ttft_s": dist(r["ttft"] for r in res), "cpu_s": cpu,
            "gate_us_request_p50": dist(r["gate_us_p50"] for r in res if r["gate_us_p50"]),
            "gate_us_hist": {"n": int(n_obs), "median": hist_quantile(before, after, 0.5),
                             "p99": hist_quantile(before, after, 0.99)}}


def concurrency(ctx: Ctx, s: dict[str, Any]) -> dict[str, Any]:
    n = s["server_phrases"]
    name = f"scale-serve-{n}"
    texts = prompts()
    jobs = [(texts[i % len(texts)], i) for i in range(s["server_requests"])]
    levels = []
    with server(ctx, policy_yaml(name, phrases(n))) as (url, t0, pid):
        for p in (name, "none"):
            stream(url, texts[0], 0, s["warmup_tokens"], p)
        start_s = time.perf_counter() - t0  # /healthz answers before the engine process is warm
        engine = httpx.get(url + "/healthz", timeout=30).json()["engine"]
        pids = {"clients": os.getpid(), "http": pid} | ({"engine": engine["pid"]} if engine.get("pid") else {})
        for k, c in enumerate(ctx.progress(s["levels"], "scale: concurrency")):
            order = [name, "none"][:: 1 if k % 2 == 0 else -1]
            got = {p: batch(url, jobs, s["server_tokens"], c, p, pids) for p in order}
            gov, base = got[name], got["none"]
            levels.append({"concurrency": c, "governed": gov, "ungoverned": base,
                           "aggregate_tps_ratio": round(gov["aggregate_tps"] / base["aggregate_tps"], 4)})
        threads = httpx.get(url + "/healthz", timeout=30).json()["engine"].get("threads")
    return {"phrases": n, "requests": len(jobs), "max_tokens": s["server_tokens"], "server_start_s": round(start_s, 1),
            "engine_threads": threads, "levels": levels}


# ---- the section -------------------------------------------------------------------------------------
def run(ctx: Ctx) -> dict:
    s = settings(ctx)
    t0 = time.perf_counter()
    rules, policies = rules_sweep(ctx, s)
    n_len = 1000 if 1000 in policies else max(policies)
    length = length_sweep(ctx, s, policies[n_len], n_len)
    conc = concurrency(ctx, s)
    data = {"size": ctx.size, "model": ctx.rt.engine.name, "cpu_count": os.cpu_count(),
            "sampling": {"temperature": TEMPERATURE, "top_p": TOP_P, "ignore_eos": True},
            "settings": s, "rules": rules, "length": length, "concurrency": conc,
            "runtime_s": round(time.perf_counter() - t0, 1)}
    return data | {"headline": headline(data)}


def headline(data: dict) -> str:
    """One sentence for the report's headline, from the measurements."""
    rows, pos, lv = data["rules"]["rows"], data["length"]["by_position"], data["concurrency"]["levels"]
    lo, hi = rows[0], rows[-1]
    return (f"gate time per token (median) {fmt(lo['gate_us']['median'])} µs at {lo['phrases']:,} banned phrases "
            f"and {fmt(hi['gate_us']['median'])} µs at {hi['phrases']:,}"
            + (f" ({hi['rules']} rules: one would not compile)" if hi["refused"] else "")
            + f", whose compile takes {fmt(hi['parse_s'] + hi['compile_s'], 1)} s; "
            f"{fmt(pos[0]['gate_us']['median'])} µs at output positions {pos[0]['from']}-{pos[0]['to']} and "
            f"{fmt(pos[-1]['gate_us']['median'])} µs at {pos[-1]['from']:,}-{pos[-1]['to']:,}; with "
            f"{lv[-1]['concurrency']} clients instead of {lv[0]['concurrency']} on one engine, the server's gate time "
            f"per token {fmt(lv[0]['governed']['gate_us_request_p50']['median'])} and "
            f"{fmt(lv[-1]['governed']['gate_us_request_p50']['median'])} µs, time to first token "
            f"{fmt(lv[0]['governed']['ttft_s']['median'], 2)} and {fmt(lv[-1]['governed']['ttft_s']['median'], 2)} s "
            "(queueing).")


def render(data: dict, ctx: Ctx) -> str:
    plot(data, ctx)
    return "\n".join([HEADING, "", *intro(data), "", *rules_md(data), "", *length_md(data), "",
                      *concurrency_md(data), "", *where_not_flat(data)]) + "\n"


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:,.{nd}f}"


def us(d: dict) -> str:
    """"median / p99" of a `dist`."""
    return f"{fmt(d['median'])} / {fmt(d['p99'])}"


def bucket(h: dict) -> str:
    """A histogram quantile: its interpolated value and the bucket it lies in."""
    hi = "∞" if h["hi"] is None else f"{h['hi']:,.0f}"
    return "-" if h["lo"] is None else f"{fmt(h['value'], 0)} ({h['lo']:,.0f}-{hi}]"


def intro(data: dict) -> list[str]:
    r = data["rules"]
    return [f"Gate cost per token is the time each decoding step spends in the gate (`Result.gate_us`: "
            f"admission and release of the token, and its mask when one is asked for; sampling and decoding "
            f"excluded), quoted as median / p99 in µs over every token of a configuration, with n the tokens. "
            f"Model {data['model']}, {data['cpu_count']} cores shared with other work, temperature "
            f"{data['sampling']['temperature']}, top_p {data['sampling']['top_p']}, end of text ignored so every "
            f"run has its full length. Governed and ungoverned runs use the same prompts and seeds, interleaved "
            f"in a rotating order; the tokens/s ratio is governed over ungoverned, per pair. The ban lists are "
            f"made-up company names (`bench/run.py`'s `thousand_phrases`) under `prevent`: ordinary text never "
            f"names them, and the rules fired in {sum(x['acted'] for x in r['rows'])} of "
            f"{len(r['rows']) * r['prompts']} runs. So this measures the standing cost the gate adds to every "
            f"token, which is the cost that could scale; what acting costs (rollbacks, resamples) is measured "
            f"elsewhere. Run size `{data['size']}`, {data['runtime_s']:.0f} s in all."]


def rules_md(data: dict) -> list[str]:
    r = data["rules"]
    out = ["### Number of banned phrases", "",
           f"{r['prompts']} prompts x {r['tokens']} tokens per configuration.", "",
           "| phrases | rules | gate µs/token p50 / p99 (n) | gate share of time | tokens/s ratio median "
           "(min-max) | aggregate ratio "
           "| parse + compile s | mask warm-up s | DFA states | mask states | search tables MB | RSS growth MB "
           "| new gate µs |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        q = x["tps_ratio"]
        out.append(f"| {x['phrases']:,} | {x['rules']} | {us(x['gate_us'])} ({x['gate_us']['n']:,}) | "
                   f"{100 * x['gate_share']:.2f}% | {fmt(q['median'], 3)} ({fmt(q['min'], 3)}-{fmt(q['max'], 3)}) | "
                   f"{fmt(x['aggregate_tps_ratio'], 3)} | {fmt(x['parse_s'] + x['compile_s'], 2)} | "
                   f"{fmt(x['warm_s'], 2)} | {x['dfa_states']:,} | {x['mask_states']:,} | "
                   f"{fmt(x['search_table_mb'])} | {fmt(x['rss_growth_mb'])} | {fmt(x['gate_new_us'])} |")
    out += ["", "Gate share of time: the gate's own time over the governed runs' generation time, which is what "
                "it can take from tokens/s. Compile is once per policy content (cached by its hash; a server "
                "compiles at start). RSS growth "
                "is this process's resident memory across parse, compile and warm-up; \"new gate\" is building "
                "the per-request gate."]
    for x in r["rows"]:
        for e in x["refused"]:
            out += ["", f"{e['phrases_per_rule']:,} phrases in one rule were refused after {e['seconds']} s: "
                    f"\"{e['error']}\""]
        if x["refused"]:
            out += ["", f"So {x['phrases']:,} phrases are measured as {x['rules']} rules of "
                    f"{x['phrases_per_rule']:,}, as the error advises (the refused tries are not in the compile "
                    "time above)."]
    out += ["", "![gate cost per token and compile cost against the number of banned phrases]"
                "(img/scale_rules.png)"]
    return out


def length_md(data: dict) -> list[str]:
    lg = data["length"]
    out = ["### Output length", "",
           f"One generation of {lg['longest']:,} tokens per seed ({lg['seeds']} seed(s)) under {lg['phrases']:,} "
           "banned phrases, and the same seed ungoverned (the same text in "
           f"{lg['same_text']} of {lg['seeds']}), on a prompt that asks for a long essay. With the rule never "
           "firing, a seed gives the same tokens whatever length is asked for, so each length is the long run's "
           "first L tokens: its gate cost over them, and its decode tokens/s from the first token to the L-th "
           "(the prompt's evaluation left out).", "",
           "| first L tokens | gate µs/token p50 / p99 (n) | tokens/s governed | tokens/s ungoverned | ratio |",
           "|---|---|---|---|---|"]
    for x in lg["rows"]:
        out.append(f"| {x['tokens']:,} | {us(x['gate_us'])} ({x['gate_us']['n']:,}) | {fmt(x['tps_governed'])} | "
                   f"{fmt(x['tps_ungoverned'])} | {fmt(x['tps_ratio']['median'], 3)} |")
    out += ["", "By position in the output (tokens/s within the bucket):", "",
            "| positions | gate µs/token p50 / p99 | n | tokens/s governed / ungoverned | ratio |",
            "|---|---|---|---|---|"]
    for b in lg["by_position"]:
        out.append(f"| {b['from']:,}-{b['to']:,} | {us(b['gate_us'])} | {b['gate_us']['n']:,} | "
                   f"{fmt(b['tps_governed'])} / {fmt(b['tps_ungoverned'])} | {fmt(b['tps_ratio'], 3)} |")
    out += ["", "![gate cost per token and decode tokens/s by position in the output](img/scale_length.png)"]
    return out


def concurrency_md(data: dict) -> list[str]:
    c = data["concurrency"]
    cpus = data["cpu_count"]
    out = ["### Concurrent streams", "",
           f"A real `ingate serve` on loopback (up and warmed in {c['server_start_s']} s) with {c['phrases']:,} "
           f"banned phrases and `policy: none` loaded; the same {c['requests']} streaming requests of up to "
           f"{c['max_tokens']} tokens (the API has no `ignore_eos`, so a request may end early) sent by 1 to "
           f"{max(x['concurrency'] for x in c['levels'])} client threads, each level governed and ungoverned, in "
           "alternating order. The server gives a local model one worker (`ingate/worker.py`): the engine runs "
           "one stream at a time and the others wait in its queue, so concurrency here is queueing, not parallel "
           "decoding. The load generator (this process) and the server's HTTP process share the machine's "
           f"{cpus} cores with the engine; their CPU seconds are counted from /proc. The server's gate time per "
           "token is read from `/metrics` (`ingate_gate_microseconds`, interpolated within its buckets, whose "
           "bounds are shown: 50, 100, 250, 500, 1,000, 2,500 µs, so the p99 is coarse) and from each response's "
           "`governance.gate_us_p50`.", "",
           "| clients | aggregate tokens/s governed / ungoverned | ratio | gate µs/token p50 (bucket) "
           "| p99 (bucket) | n | responses' gate p50, median | TTFT p50 / p99 s | per-request tokens/s p50 "
           "| CPU s clients / HTTP / engine, of wall s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for x in c["levels"]:
        g, b = x["governed"], x["ungoverned"]
        h = g["gate_us_hist"]
        out.append(f"| {x['concurrency']} | {fmt(g['aggregate_tps'])} / {fmt(b['aggregate_tps'])} | "
                   f"{fmt(x['aggregate_tps_ratio'], 3)} | {bucket(h['median'])} | {bucket(h['p99'])} | {h['n']:,} | "
                   f"{fmt(g['gate_us_request_p50']['median'])} | {fmt(g['ttft_s']['median'], 2)} / "
                   f"{fmt(g['ttft_s']['p99'], 2)} | {fmt(g['per_request_tps_p50'])} | {cpu(g)} |")
    th = c.get("engine_threads") or {}
    if th:
        per = ", ".join(f"{k}: {v} ms" for k, v in (th.get("ms_per_token") or {}).items())
        out += ["", f"The engine's decode threads ({th.get('mode')}) ended at {th.get('current')}"
                + (f"; its last measured ms per token by thread count: {per}" if per else "") + "."]
    out += ["", "TTFT and per-request tokens/s are the governed batch's; the ungoverned batch's are in the JSON.",
            "", "![aggregate tokens/s, gate cost and time to first token against concurrent clients]"
                "(img/scale_concurrency.png)"]
    return out


def cpu(b: dict) -> str:
    """A batch's CPU seconds by process, and its wall time."""
    c = b["cpu_s"]
    return " / ".join(fmt(c.get(k), 1) for k in ("clients", "http", "engine")) + f", {fmt(b['wall_s'])}"


def growth(a: float | None, b: float | None) -> str:
    return f"{b / a:.2f}x" if a and b is not None and a == a and b == b else "-"


def trend(a: float | None, b: float | None, tol: float = 1.25) -> str:
    """How b compares with a, in words: within tol either way is flat."""
    if not a or a != a or b is None or b != b:
        return "could not be compared"
    r = b / a
    if r > tol:
        return f"grows {r:.2f}x"
    if r < 1 / tol:
        return f"falls to {r:.2f}x"
    return f"stays within {round((tol - 1) * 100)}% ({r:.2f}x)"


def where_not_flat(data: dict) -> list[str]:
    """What the measurements say about flatness, worded from the numbers."""
    return ["### Where it is and is not flat", "", *rules_words(data), *length_words(data),
            *concurrency_words(data)]


def rules_words(data: dict) -> list[str]:
    rows = data["rules"]["rows"]
    lo, hi = rows[0], rows[-1]
    one = [x for x in rows if x["rules"] == 1]
    big1 = one[-1] if one else lo
    comp = lo["parse_s"] + lo["compile_s"], hi["parse_s"] + hi["compile_s"]
    slow = ", ".join(f"{x['gate_us']['over_1ms']} of {x['gate_us']['n']:,} at {x['phrases']:,}" for x in rows)
    per_token = (f"- **Rules, per token:** from {lo['phrases']:,} to {big1['phrases']:,} phrases in one rule, the "
                 f"median gate time per token {trend(lo['gate_us']['median'], big1['gate_us']['median'])} ("
                 f"{fmt(lo['gate_us']['median'])} to {fmt(big1['gate_us']['median'])} µs). A rule is one automaton, "
                 "and a step's work depends on the partial matches alive, not on how many phrases it holds.")
    if hi is not big1:
        per_token += (f" At {hi['phrases']:,} phrases the ban list is {hi['rules']} automata (one rule would not "
                      "compile, below), and a step walks each: the median "
                      f"{trend(big1['gate_us']['median'], hi['gate_us']['median'])} against {big1['phrases']:,} "
                      f"phrases ({fmt(hi['gate_us']['median'])} µs).")
    per_token += (f" The p99 goes from {fmt(lo['gate_us']['p99'])} to {fmt(hi['gate_us']['p99'])} µs; it rests on "
                  f"a few slow steps (over 1 ms: {slow}), which on a shared machine include time the process was "
                  "not running.")
    once = (f"- **Rules, once per policy:** this is what is not flat. Parse and compile time goes from "
            f"{fmt(comp[0], 2)} s to {fmt(comp[1], 2)} s ({growth(*comp)}), the automata from {lo['dfa_states']:,} "
            f"to {hi['dfa_states']:,} DFA states and {fmt(lo['search_table_mb'])} to {fmt(hi['search_table_mb'])} MB "
            f"of search tables, and resident memory grows {fmt(hi['rss_growth_mb'])} MB for {hi['phrases']:,} "
            "phrases")
    if hi["refused"]:
        r0 = hi["refused"][0]
        once += (f"; {r0['phrases_per_rule']:,} phrases in one rule are refused as too complex (after "
                 f"{r0['seconds']} s), so a list that long must be split into rules, which the gate walks one by one")
    once += (f". A new gate per request costs {fmt(lo['gate_new_us'])} µs at {lo['phrases']:,} phrases and "
             f"{fmt(hi['gate_new_us'])} µs at {hi['phrases']:,}.")
    return [per_token, throughput_words(rows), once]


def throughput_words(rows: list[dict]) -> str:
    """What the gate can take from tokens/s (its share of the time) against the measured ratios."""
    shares = [100 * x["gate_share"] for x in rows]
    lo = min(x["tps_ratio"]["min"] for x in rows)
    hi = max(x["tps_ratio"]["max"] for x in rows)
    medians = ", ".join(fmt(x["tps_ratio"]["median"], 3) for x in rows)
    out = (f"- **Rules, throughput:** the gate's own time is {min(shares):.2f}-{max(shares):.2f}% of a governed "
           f"run's time at every rule count, so that is what it can take from tokens/s. The governed/ungoverned "
           f"tokens/s ratios measured per pair range from {fmt(lo, 3)} to {fmt(hi, 3)} (medians {medians})")
    if hi > 1 and 1 - lo > 3 * max(shares) / 100:
        out += (": a spread many times the gate's share, in both directions, which is the run-to-run noise of "
                "decoding on this shared machine rather than the gate")
    return out + "."


def length_words(data: dict) -> list[str]:
    pos, rows = data["length"]["by_position"], data["length"]["rows"]
    p0, p1 = pos[0], pos[-1]
    first, last = p0["gate_us"]["median"], p1["gate_us"]["median"]
    span = f"{p1['from']:,}-{p1['to']:,}"
    dec = trend(p0["tps_ungoverned"], p1["tps_ungoverned"], 1.1)
    why = " (attention over a longer context: the model's cost, not the gate's)" if dec.startswith("falls") else ""
    share, seeds = data["length"]["gate_share"], data["length"]["seeds"]
    gaps = [abs(1 - x["tps_ratio"]) for x in pos if x["tps_ratio"] == x["tps_ratio"]]
    ratios = [x["tps_ratio"] for x in pos]
    noise = "" if not gaps or max(gaps) <= 3 * share else (
        f". The ratio by position ranges from {fmt(min(ratios), 3)} to {fmt(max(ratios), 3)}: where it is further "
        f"from 1 than the gate's share, the gap is decode time, not gate time, and with {seeds} pair(s) of runs on a "
        "shared machine it is not separable from run-to-run noise")
    return [f"- **Output length:** the gate's median per token {trend(first, last)} from the first positions to "
            f"the last ({fmt(first)} µs at {p0['from']}-{p0['to']}, {fmt(last)} µs at {span}; p99 "
            f"{fmt(p0['gate_us']['p99'])} and {fmt(p1['gate_us']['p99'])}). Ungoverned decoding {dec} over the "
            f"output ({fmt(p0['tps_ungoverned'])} tokens/s in the first positions, {fmt(p1['tps_ungoverned'])} at "
            f"{span}){why}. Governed over ungoverned decode tokens/s is {fmt(rows[0]['tps_ratio']['median'], 3)} for "
            f"the first {rows[0]['tokens']:,} tokens and {fmt(rows[-1]['tps_ratio']['median'], 3)} for all "
            f"{rows[-1]['tokens']:,}, while the gate's own time is {100 * share:.2f}% of the governed runs'"
            + noise + "."]


def concurrency_words(data: dict) -> list[str]:
    lv = data["concurrency"]["levels"]
    a, b = lv[0], lv[-1]
    ga, gb = a["governed"], b["governed"]
    ua, ub = a["ungoverned"]["aggregate_tps"], b["ungoverned"]["aggregate_tps"]
    side = gb["cpu_s"].get("clients", 0.0) + gb["cpu_s"].get("http", 0.0)
    ratios = [x["aggregate_tps_ratio"] for x in lv]
    gate = trend(ga["gate_us_request_p50"]["median"], gb["gate_us_request_p50"]["median"])
    ttft = trend(ga["ttft_s"]["median"], gb["ttft_s"]["median"])
    text = (f"- **Concurrency:** from {a['concurrency']} to {b['concurrency']} clients the server's gate time per "
            f"token {gate} (responses' p50, median: {fmt(ga['gate_us_request_p50']['median'])} to "
            f"{fmt(gb['gate_us_request_p50']['median'])} µs), and governed over ungoverned aggregate tokens/s is "
            f"{fmt(min(ratios), 3)} to {fmt(max(ratios), 3)} across the levels. Aggregate tokens/s "
            f"{trend(ga['aggregate_tps'], gb['aggregate_tps'], 1.1)} governed ({fmt(ga['aggregate_tps'])} to "
            f"{fmt(gb['aggregate_tps'])}) and {trend(ua, ub, 1.1)} ungoverned ({fmt(ua)} to {fmt(ub)}); in the "
            f"governed batch at {b['concurrency']} clients the load generator and the HTTP process used "
            f"{fmt(side)} CPU s beside the engine's {fmt(gb['cpu_s'].get('engine'))} in {fmt(gb['wall_s'])} s of wall "
            f"time on {data['cpu_count']} cores. Time to first token p50 {ttft} ({fmt(ga['ttft_s']['median'], 2)} "
            f"to {fmt(gb['ttft_s']['median'], 2)} s) and per-request tokens/s "
            f"{trend(ga['per_request_tps_p50'], gb['per_request_tps_p50'])}")
    if ttft.startswith("grows"):
        text += (": this is what concurrency costs, waiting in the queue while one engine serves the streams one "
                 "after another, governed or not")
    return [text + "."]


# ---- plots ----------------------------------------------------------------------------------------------
def plot(data: dict, ctx: Ctx) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctx.img.mkdir(parents=True, exist_ok=True)
    for name, draw, panels in (("scale_rules", plot_rules, 3), ("scale_length", plot_length, 2),
                               ("scale_concurrency", plot_concurrency, 3)):
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.6))
        draw(data, axes)
        fig.tight_layout()
        fig.savefig(ctx.img / f"{name}.png", dpi=110)
        plt.close(fig)


def median_p99(ax: Any, x: list, ds: list[dict]) -> None:
    """A median line and a dashed p99 line of `dist`s in µs: from zero, or on a log scale when the
    p99 is more than 20 times the median (a few slow steps would flatten the median)."""
    med, p99 = [d["median"] for d in ds], [d["p99"] for d in ds]
    ax.plot(x, med, "o-", label="median")
    ax.plot(x, p99, "s--", label="p99")
    if max(p99) > 20 * min(med):
        ax.set(yscale="log", ylabel="gate µs per token (log)")
    else:
        ax.set(ylim=(0, 1.1 * max(p99)), ylabel="gate µs per token")
    ax.legend()


def plot_rules(data: dict, axes: Any) -> None:
    rows = data["rules"]["rows"]
    n = [x["phrases"] for x in rows]
    a, b, c = axes
    median_p99(a, n, [x["gate_us"] for x in rows])
    a.set(xscale="log", xlabel="banned phrases", title="Gate cost per token")
    b.plot(n, [x["parse_s"] + x["compile_s"] for x in rows], "o-", label="parse + compile")
    b.plot(n, [max(x["warm_s"], 1e-3) for x in rows], "^-", label="mask warm-up")
    b.set(xscale="log", yscale="log", xlabel="banned phrases", ylabel="seconds", title="Once per policy")
    b.legend()
    c.plot(n, [max(x["rss_growth_mb"], 0.1) for x in rows], "o-", label="resident memory growth")
    c.plot(n, [max(x["search_table_mb"], 0.1) for x in rows], "s--", label="search tables")
    c.set(xscale="log", yscale="log", xlabel="banned phrases", ylabel="MB", title="Memory")
    c.legend()


def plot_length(data: dict, axes: Any) -> None:
    lg = data["length"]
    pos = lg["by_position"]
    mids = [(x["from"] + x["to"]) / 2 for x in pos]
    a, b = axes
    median_p99(a, mids, [x["gate_us"] for x in pos])
    a.set(xscale="log", xlabel="position in the output (bucket middle)",
          title=f"Gate cost by position ({lg['phrases']:,} phrases)")
    b.plot(mids, [x["tps_governed"] for x in pos], "o-", label="governed")
    b.plot(mids, [x["tps_ungoverned"] for x in pos], "s--", label="ungoverned")
    b.set(xscale="log", xlabel="position in the output (bucket middle)", ylabel="tokens/s in the bucket",
          title="Decode throughput by position", ylim=(0, None))
    b.legend()


def plot_concurrency(data: dict, axes: Any) -> None:
    lv = data["concurrency"]["levels"]
    c = [x["concurrency"] for x in lv]
    a, b, t = axes
    a.plot(c, [x["governed"]["aggregate_tps"] for x in lv], "o-", label="governed")
    a.plot(c, [x["ungoverned"]["aggregate_tps"] for x in lv], "s--", label="ungoverned")
    a.set(xlabel="concurrent clients", ylabel="aggregate tokens/s", title="Throughput", ylim=(0, None), xticks=c)
    a.legend()
    b.plot(c, [x["governed"]["gate_us_request_p50"]["median"] for x in lv], "o-", label="responses' p50, median")
    b.plot(c, [x["governed"]["gate_us_hist"]["median"]["value"] for x in lv], "s--", label="histogram p50")
    b.set(xlabel="concurrent clients", ylabel="gate µs per token", title="Gate cost in the server", ylim=(0, None),
          xticks=c)
    b.legend()
    for side, style in (("governed", "o-"), ("ungoverned", "s--")):
        t.plot(c, [x[side]["ttft_s"]["median"] for x in lv], style, label=f"{side} p50")
    t.set(xlabel="concurrent clients", ylabel="seconds", title="Time to first token", ylim=(0, None), xticks=c)
    t.legend()
