"""Token-mask latency: ingate's cached byte-DFA rows against llguidance, on the same tokens.

Why this exists: ingate claims its prevent-rule masks cost little per token because a mask
depends only on a search-DFA state and is computed once per state. llguidance is the obvious
yardstick: it can express "this text must never contain X" as a Lark terminal with
complement, and computes masks per step with a token trie. The script walks one tokenized
passage through both, for three policies, timing every mask at every position (interleaved
per position, so machine noise hits both alike), and checks that both forbid the same tokens
(a speed comparison of two masks that disagree would be meaningless).

Run:  .venv/bin/python bench/masks.py [--quick]
Writes bench/results/masks.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import llguidance
import llguidance.llamacpp
import llguidance.numpy as llnp
import numpy as np

from ingate.engines.llamacpp import LlamaCppEngine
from ingate.gate.compile import CompiledPolicy, compile_policy
from ingate.gate.gate import Gate, Verdict
from ingate.gate.masks import TokenTable
from ingate.patterns import BUILTIN_PATTERNS
from ingate.policy import Policy, parse_policy
from phrases import made_up_phrases

RESULTS = Path(__file__).resolve().parent / "results" / "masks.json"
SEED = 20240611
N_RANDOM_PHRASES = 1000
QUICK_POSITIONS = 120
REPS = 5  # warm repetitions per position (both engines); cheap: ~10 µs each
QUICK_REPS = 2
COMPILE_REPS = 3  # compile repeats stop early once an engine has spent COMPILE_BUDGET_NS on them
COMPILE_BUDGET_NS = 3_000_000_000
# llguidance's default step_lexer_fuel (200k) is exhausted on the 1,000-phrase complement
# ("too many expressions constructed"), after which the matcher forbids everything. Every
# lane runs with this raised fuel (it only matters when exceeded); the default-limits walk
# is reported separately.
LLG_STEP_FUEL = 1_000_000_000

ns = time.perf_counter_ns

# A passage with full and partial mentions of every policy's forbidden text. {N0}..{N2} are
# full random names from policy (c), {P0}/{P1} cut-off ones (first word + a few letters).
PASSAGE = """\
Travel notes, spring edition

Our group met on Monday morning by the river, and the first question, as always, was where to
go first. Half of us wanted the Eiff, the other half wanted coffee. In the end we walked past
the Eiffel Tower twice before anyone thought of buying tickets, which says a lot about our
planning. The guide, a patient woman called {N0}, told us that the queue is shortest just
after lunch, when the tour buses leave for the museums on the other bank.

Work followed us on the trip, of course. Acme sent three messages before breakfast, and by
noon the whole Acme Co account team had joined the thread. Someone asked whether ACME CORP
would pay for the dinner on Thursday; nobody answered. If you need to reach me about the
invoices, write to me at john@ex or, better, at jane.doe@example.com, which I check every
evening. Support questions go to support@acme-corp.co.uk, and the booking desk answers at
bookings@travel-desk.example.org during office hours.

For anything urgent you can call me on (555) 123-4567, or the hotel on +1 555.867.5309. The
office number starts with 555-12 but I never remember the rest, so please do not rely on it.
My colleague {P0} will forward the list of contacts later; {N1} has the spreadsheet and
{P1} said she would check the totals before Friday. The insurance company wants a reference
number for the claim, which is 4821 7730, and a short description of what happened.

On Wednesday it rained all day. We spent the afternoon in a small bookshop where the owner,
{N2}, recommended a history of the old iron bridges and a guide to the markets. I bought
both, and a map that turned out to be twenty years old. In the evening we ate at a place near
the station: soup, bread, a plate of cheese and a bottle of local wine. The bill was
reasonable, the waiter was friendly, and nobody mentioned work for almost two hours.

Thursday was the day of the long walk. We followed the river from the old harbour to the
gardens, stopping for photographs at every bridge. The light was beautiful in the late
afternoon, and even the tired ones agreed that it was worth it. On the way back we passed a
shop selling tiny models of the Eiffel tower, miniature Acme Corp delivery vans and postcards
of every monument in the city; the owner gave us a discount because we bought twelve.

Before leaving we wrote a short summary for the people who stayed at home. It lists the
places we visited, the restaurants we liked, the ones we did not, and a few practical tips:
buy tickets online, carry an umbrella, and do not trust old maps. Questions about the summary
can go to notes@example.net or to 555 010 9999 after six in the evening.
"""

# Untimed agreement probes: states the passage visits rarely (partial matches of every kind).
# "nfkc" probes use characters ingate's phrase normalisation folds and plain (?i) does not.
PROBES: dict[str, dict[str, list[str]]] = {
    "a": {"ascii": ["Visit the Eiffel Tower", "EIFFEL", "an eiffeltower", "Acme Corp", "acme   corp",
                    "Acme\nCorp", "ACME\tcorp", "Acme Corporation", "the Acme\u00a0Corp office"],
          "nfkc": ["\uff25\uff49\uff46\uff46\uff45\uff4c", "Ei\ufb00el", "\uff21\uff43\uff4d\uff45 Corp"]},
    "b": {"ascii": ["mail bob.smith@mail.example.com now", "a.b-c@d-e.fg", "x_y%z+1@host.museum",
                    "call 555-123-4567", "+1 (555) 123 4567", "(555)1234567", "tel 1-800-555-0199"],
          "nfkc": []},
}
N_PHRASE_PROBES = 45

_RUST_META = set("\\.+*?()|[]{}^$#&-~/")


@dataclass
class Lane:
    """One policy walked by both engines: its gate, its matchers and everything measured."""

    name: str
    policy: Policy
    compiled: CompiledPolicy
    gate: Gate
    matcher: llguidance.LLMatcher
    free: llguidance.LLMatcher  # `/(?s:.*)/`: what llguidance forbids whatever the policy
    bitmask: np.ndarray
    free_bitmask: np.ndarray
    lark: str
    ingate_compile_ns: list[int]
    llg_compile_ns: list[int]
    ing_first: list[int] = field(default_factory=list)  # first mask() at each position
    ing_cold: list[int] = field(default_factory=list)  # ...when that computed a new row (position > 0)
    ing_warm_first: list[int] = field(default_factory=list)  # ...when the row was cached (position > 0)
    ing_warm_best: list[int] = field(default_factory=list)  # best repeated (cached) call per position
    llg_first: list[int] = field(default_factory=list)  # first fill at each position
    llg_best: list[int] = field(default_factory=list)  # best of first + repeats per position
    ing_forbidden: list[int] = field(default_factory=list)
    llg_forbidden: list[int] = field(default_factory=list)
    identical: int = 0
    compared: int = 0
    jaccards: list[float] = field(default_factory=list)
    only_ingate: dict[int, int] = field(default_factory=dict)  # token -> positions where only ingate forbids
    only_llg: dict[int, int] = field(default_factory=dict)
    skipped_both: int = 0
    skipped_ingate_only: int = 0
    skipped_llg_only: int = 0
    admitted: int = 0
    default_limits: dict | None = None  # where llguidance with default limits failed, if it did
    probes: dict[str, dict] = field(default_factory=dict)  # group -> agreement on the probe texts
    states_visited: int = 0  # distinct ingate mask rows (detector, search state, view) after the walk


def passage(phrases: list[str]) -> str:
    """The benchmark text, with a few of policy (c)'s names in full and cut off."""
    def cut(p: str) -> str:
        first, second = p.split(" ")
        return f"{first} {second[:3]}"

    return PASSAGE.format(N0=phrases[11], N1=phrases[222], N2=phrases[999],
                          P0=cut(phrases[42]), P1=cut(phrases[500]))


PHONE_19E3FD0 = (r"(?:\+?1[-. ]?)?\(?[0-9]{3}\)?[-. ]?[0-9]{3}[-. ]?[0-9]{4}"
                 r"|\+[0-9]{1,3}(?:[ .-]?\(0\))?(?:[ .-]?[0-9]){6,12}"
                 r"|\([0-9]{2,4}\)[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}"
                 r"|0[0-9]{2,4}(?:[ .-][0-9]{2,4}){2,4}"
                 r"|[0-9]{3}[ .-][0-9]{4}|[0-9]{3}[ .-][0-9]{3}[ .-][0-9]{3}")


def policy_yaml(name: str, *, phrases: list[str] | None = None, patterns: list[str] | None = None,
                regexes: list[str] | None = None) -> str:
    """A one-rule prevent policy (JSON lists are valid YAML flow sequences). Phrases match as
    written (separators, confusables and accents exact), which is what a regex can say to llguidance;
    bench/spelling.py measures the folding modes."""
    if phrases:
        forbid = (f"phrases: {json.dumps(phrases)}\n      separators: exact\n      confusables: exact\n"
                  "      accents: exact")
    elif regexes:
        forbid = f"regex: {json.dumps(regexes)}"
    else:
        forbid = f"patterns: {json.dumps(patterns)}"
    return (f"version: 1\nname: {name}\nrules:\n  - id: {name}\n"
            f"    forbid:\n      {forbid}\n    action: prevent\n")


def rx_escape(text: str) -> str:
    """Escape for Rust regex syntax (Python's re.escape escapes characters Rust may reject)."""
    return "".join("\\" + c if c in _RUST_META else c for c in text)


def phrase_regex(phrases: list[str]) -> str:
    """Case-insensitive phrases with any whitespace run between words, as ingate matches them.

    ingate also folds NFKD (full-width letters, ligatures...); plain (?i) does not: see the
    agreement check for what that leaves out.
    """
    alts = [r"\s+".join(rx_escape(w) for w in p.split()) for p in phrases]
    return "(?i:" + "|".join(alts) + ")"


def lark_never(regex: str) -> str:
    """A grammar accepting any valid UTF-8 text that never contains a match of `regex`."""
    if "/" in regex:
        raise ValueError("regex must not contain '/' (Lark delimiter)")
    return f"start: SAFE\nSAFE: /(?s:.*)/ & ~/(?s:.*)(?:{regex})(?s:.*)/\n"


def unpack_forbidden(bitmask: np.ndarray, n: int) -> np.ndarray:
    """llguidance's bitmask (bit set = allowed, little-endian words) as bool forbidden per token."""
    allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:n]
    return allowed == 0


def new_matcher(tok: llguidance.LLTokenizer, lark: str, *, raised: bool = True) -> llguidance.LLMatcher:
    """Grammar + matcher creation: what llguidance pays before the first mask."""
    limits = llguidance.LLParserLimits(step_lexer_fuel=LLG_STEP_FUEL) if raised else None
    m = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_lark(lark), log_level=int(raised),
                             limits=limits)
    if m.is_error():
        raise SystemExit(f"llguidance rejected the grammar: {m.get_error()}\n{lark[:300]}")
    return m


def default_limits_failure(tok: llguidance.LLTokenizer, lark: str, ids: list[int],
                           n_vocab: int) -> dict | None:
    """Walk the text with llguidance's default limits (untimed): where, if anywhere, does it give up?"""
    m = new_matcher(tok, lark, raised=False)
    bm = llnp.allocate_token_bitmask(1, n_vocab)
    for i, t in enumerate(ids):
        llnp.fill_next_token_bitmask(m, bm)
        if m.is_error():
            return {"position": i, "error": m.get_error().splitlines()[0]}
        if not unpack_forbidden(bm, n_vocab)[t]:
            m.consume_token(t)
    return None


def build_lane(name: str, policy_text: str, lark: str, table: TokenTable,
               tok: llguidance.LLTokenizer, n_vocab: int, compile_reps: int) -> Lane:
    """Compile the policy in both engines, timing it: first compile, then fresh repeats."""
    policy = parse_policy(policy_text, source=f"<bench:{name}>")
    t0 = ns()
    compiled = compile_policy(policy)
    ing_ns = [ns() - t0]
    for _ in range(compile_reps - 1):  # CompiledPolicy() recompiles (compile_policy would hit its cache)
        if sum(ing_ns) > COMPILE_BUDGET_NS:
            break
        t0 = ns()
        CompiledPolicy(policy)
        ing_ns.append(ns() - t0)
    llg_ns: list[int] = []
    matcher = None
    for _ in range(compile_reps):
        if sum(llg_ns) > COMPILE_BUDGET_NS:
            break
        t0 = ns()
        matcher = new_matcher(tok, lark)
        llg_ns.append(ns() - t0)
    assert matcher is not None
    return Lane(name=name, policy=policy, compiled=compiled, gate=Gate(compiled, table), matcher=matcher,
                free=new_matcher(tok, "start: /(?s:.*)/\n"),
                bitmask=llnp.allocate_token_bitmask(1, n_vocab),
                free_bitmask=llnp.allocate_token_bitmask(1, n_vocab),
                lark=lark, ingate_compile_ns=ing_ns, llg_compile_ns=llg_ns)


def comparable(lane: Lane, forb: np.ndarray, llg_forb: np.ndarray,
               n_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Both forbidden sets restricted to tokens llguidance allows without any policy.

    llguidance rejects special tokens and invalid UTF-8 by itself; ingate sees special tokens
    as empty and never forbids them. Neither is about the policy, so they are left out.
    """
    llnp.fill_next_token_bitmask(lane.free, lane.free_bitmask)
    ordinary = ~unpack_forbidden(lane.free_bitmask, n_vocab)
    return forb & ordinary, llg_forb & ordinary


def probe_agreement(lane: Lane, texts: list[str], engine: LlamaCppEngine, table: TokenTable,
                    n_vocab: int) -> dict:
    """Compare both masks at every token boundary of each text (untimed), from a fresh stream.

    A text ends at its first token either engine forbids (the mask before it is compared).
    llguidance is rolled back rather than rebuilt, so its lazily built lexer states are kept.
    """
    tb = table.token_bytes
    out: dict = {"texts": len(texts), "positions": 0, "identical": 0, "with_forbidden": 0,
                 "texts_stopped_by_both": 0, "texts_stopped_by_one": 0, "differences": []}
    for text in texts:
        gate = Gate(lane.compiled, table)
        fed = 0
        for token in [*engine.tokenize(text), None]:
            forb = gate.mask()
            llnp.fill_next_token_bitmask(lane.matcher, lane.bitmask)
            llg_forb = unpack_forbidden(lane.bitmask, n_vocab)
            a, b = comparable(lane, forb, llg_forb, n_vocab)
            out["positions"] += 1
            out["with_forbidden"] += bool((a | b).any())
            if np.array_equal(a, b):
                out["identical"] += 1
            elif len(out["differences"]) < 6:
                out["differences"].append({
                    "text": text, "after": gate.raw.decode("utf-8", errors="replace"),
                    "only_ingate": [token_repr(tb, int(t)) for t in np.flatnonzero(a & ~b)[:6]],
                    "only_llguidance": [token_repr(tb, int(t)) for t in np.flatnonzero(b & ~a)[:6]]})
            if token is None:
                break
            if forb[token] or llg_forb[token]:
                both = forb[token] and llg_forb[token]
                out["texts_stopped_by_both" if both else "texts_stopped_by_one"] += 1
                break
            if gate.admit(token).verdict is not Verdict.ADMIT:
                raise SystemExit(f"{lane.name}: ingate did not admit unmasked token {token} in {text!r}")
            if not (lane.matcher.consume_token(token) and lane.free.consume_token(token)):
                raise SystemExit(f"{lane.name}: llguidance refused token {token}: {lane.matcher.get_error()}")
            fed += 1
        if fed and not (lane.matcher.rollback(fed) and lane.free.rollback(fed)):
            raise SystemExit(f"{lane.name}: llguidance rollback failed: {lane.matcher.get_error()}")
    return out


def phrase_probes(phrases: list[str], seed: int) -> list[str]:
    """Random names of policy (c) in sentences, as written, upper-cased, or split by a newline."""
    rng = random.Random(seed + 1)
    picks = rng.sample(phrases, N_PHRASE_PROBES)
    forms = [lambda p: p, str.upper, lambda p: p.lower().replace(" ", "\n  ")]
    return [f"I met {forms[i % 3](p)} today" for i, p in enumerate(picks)]


def step(lane: Lane, token: int, reps: int, n_vocab: int) -> None:
    """Measure both masks at the current position, compare them, then advance both on `token`.

    The token is skipped (not fed to either engine) if either forbids it, so both stay on
    the same text.
    """
    gate, matcher, bm, fill = lane.gate, lane.matcher, lane.bitmask, llnp.fill_next_token_bitmask
    rows_before = gate.masks.cached_rows
    t0 = ns()
    forb = gate.mask()
    t1 = ns()
    fill(matcher, bm)
    t2 = ns()
    first = t1 - t0
    lane.ing_first.append(first)
    if lane.compared:  # position 0 also builds per-policy structures: reported on its own
        (lane.ing_cold if gate.masks.cached_rows > rows_before else lane.ing_warm_first).append(first)
    lane.llg_first.append(t2 - t1)
    best_i = best_l = 1 << 62
    llg_best = t2 - t1
    for _ in range(reps):
        t0 = ns()
        gate.mask()
        t1 = ns()
        fill(matcher, bm)
        t2 = ns()
        best_i = min(best_i, t1 - t0)
        best_l = min(best_l, t2 - t1)
    lane.ing_warm_best.append(best_i)
    lane.llg_best.append(min(llg_best, best_l))

    llg_forb = unpack_forbidden(bm, n_vocab)
    a, b = comparable(lane, forb, llg_forb, n_vocab)
    lane.ing_forbidden.append(int(a.sum()))
    lane.llg_forbidden.append(int(b.sum()))
    lane.compared += 1
    union = int((a | b).sum())
    if union:
        lane.jaccards.append(int((a & b).sum()) / union)
    if np.array_equal(a, b):
        lane.identical += 1
    else:
        for t in np.flatnonzero(a & ~b):
            lane.only_ingate[int(t)] = lane.only_ingate.get(int(t), 0) + 1
        for t in np.flatnonzero(b & ~a):
            lane.only_llg[int(t)] = lane.only_llg.get(int(t), 0) + 1

    in_forb, llg_says_no = bool(forb[token]), bool(llg_forb[token])
    if in_forb or llg_says_no:
        if in_forb and llg_says_no:
            lane.skipped_both += 1
        elif in_forb:
            lane.skipped_ingate_only += 1
        else:
            lane.skipped_llg_only += 1
        return
    adm = gate.admit(token)
    if adm.verdict is not Verdict.ADMIT:
        raise SystemExit(f"{lane.name}: ingate returned {adm.verdict} for an unmasked token {token}")
    gate.release()
    if not (matcher.consume_token(token) and lane.free.consume_token(token)):
        raise SystemExit(f"{lane.name}: llguidance refused token {token}: {matcher.get_error()}")
    lane.admitted += 1


def stats_us(samples: list[int]) -> dict[str, float | int]:
    """p50/p90/p99/max/mean in microseconds (n = number of samples)."""
    if not samples:
        return {"n": 0}
    a = np.asarray(samples, dtype=np.float64) / 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": len(samples), "p50": round(float(p50), 2), "p90": round(float(p90), 2),
            "p99": round(float(p99), 2), "max": round(float(a.max()), 2), "mean": round(float(a.mean()), 2)}


def token_repr(tb: list[bytes], t: int) -> str:
    """Token id and bytes, so a disagreement can be looked up."""
    return f"{t}:{tb[t]!r}"


def lane_report(lane: Lane, tb: list[bytes]) -> dict:
    """Every figure for one policy, for the JSON file."""
    def top(d: dict[int, int]) -> list[str]:
        return [f"{token_repr(tb, t)} x{c}" for t, c in sorted(d.items(), key=lambda kv: -kv[1])[:15]]

    diff_tokens = set(lane.only_ingate) | set(lane.only_llg)
    return {
        "compile_ms": {
            "ingate_first": round(lane.ingate_compile_ns[0] / 1e6, 3),
            "ingate_best": round(min(lane.ingate_compile_ns) / 1e6, 3),
            "llguidance_first": round(lane.llg_compile_ns[0] / 1e6, 3),
            "llguidance_best": round(min(lane.llg_compile_ns) / 1e6, 3),
            "ingate_runs": len(lane.ingate_compile_ns),
            "llguidance_runs": len(lane.llg_compile_ns),
        },
        "ingate_search_dfa_states": lane.gate.detectors[lane.compiled.prevent_indices[0]].search.n_states,
        "ingate_states_visited": lane.states_visited,
        "first_mask_after_compile_us": {"ingate": round(lane.ing_first[0] / 1e3, 1),
                                        "llguidance": round(lane.llg_first[0] / 1e3, 1)},
        "llguidance_default_limits_failure": lane.default_limits,
        "positions": lane.compared,
        "tokens_admitted": lane.admitted,
        "tokens_skipped": {"both": lane.skipped_both, "ingate_only": lane.skipped_ingate_only,
                           "llguidance_only": lane.skipped_llg_only},
        "latency_us": {
            "ingate_mask_first_call": stats_us(lane.ing_first),
            "ingate_mask_cold": stats_us(lane.ing_cold),
            "ingate_mask_warm_first_call": stats_us(lane.ing_warm_first),
            "ingate_mask_warm_best": stats_us(lane.ing_warm_best),
            "llguidance_fill_first_call": stats_us(lane.llg_first),
            "llguidance_fill_best": stats_us(lane.llg_best),
        },
        "agreement": {
            "positions_identical": lane.identical,
            "positions_compared": lane.compared,
            "jaccard_mean": round(float(np.mean(lane.jaccards)), 6) if lane.jaccards else None,
            "jaccard_min": round(float(np.min(lane.jaccards)), 6) if lane.jaccards else None,
            "positions_with_nonempty_union": len(lane.jaccards),
            "forbidden_per_position_ingate_mean": round(float(np.mean(lane.ing_forbidden)), 2),
            "forbidden_per_position_llguidance_mean": round(float(np.mean(lane.llg_forbidden)), 2),
            "distinct_tokens_differing": len(diff_tokens),
            "distinct_differing_tokens_all_non_ascii": all(any(c > 127 for c in tb[t]) for t in diff_tokens),
            "only_ingate_forbids": top(lane.only_ingate),
            "only_llguidance_forbids": top(lane.only_llg),
            "probes": lane.probes,
        },
        "lark_grammar_chars": len(lane.lark),
        "lark_grammar_head": lane.lark[:240],
        "raw_ns": {"ingate_first_call": lane.ing_first, "ingate_warm_best": lane.ing_warm_best,
                   "llguidance_first_call": lane.llg_first, "llguidance_best": lane.llg_best},
    }


def fmt(s: dict) -> str:
    """One latency row's numeric cells."""
    if not s.get("n"):
        return "| 0 | – | – | – | – |"
    return f"| {s['n']} | {s['p50']:.1f} | {s['p90']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |"


def markdown(report: dict) -> str:
    """The tables printed to stdout."""
    lines = ["### Mask latency per position (µs)", "",
             "| policy | series | n | p50 | p90 | p99 | max |", "|---|---|---:|---:|---:|---:|---:|"]
    reps = report["config"]["reps"]
    series = [("ingate_mask_first_call", "ingate mask(), first call (cold+warm)"),
              ("ingate_mask_cold", "ingate mask(), cold (new state, position > 0)"),
              ("ingate_mask_warm_first_call", "ingate mask(), warm first call (position > 0)"),
              ("ingate_mask_warm_best", f"ingate mask(), repeat at same position, best of {reps}"),
              ("llguidance_fill_first_call", "llguidance fill, first call"),
              ("llguidance_fill_best", f"llguidance fill, repeat at same position, best of {reps + 1}")]
    for name, lane in report["policies"].items():
        for key, label in series:
            lines.append(f"| {name} | {label} " + fmt(lane["latency_us"][key]))
    lines += ["", "### Compile, states, agreement", "",
              "| policy | ingate compile ms (first / best) | llguidance grammar+matcher ms (first / best) "
              "| first mask after compile µs (ingate / llg) "
              "| ingate states visited / search-DFA states | skipped tokens | positions identical "
              "| Jaccard mean (min) | tokens differing | probe positions identical |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, lane in report["policies"].items():
        c, ag, sk = lane["compile_ms"], lane["agreement"], lane["tokens_skipped"]
        fm = lane["first_mask_after_compile_us"]
        probes = "; ".join(f"{g} {v['identical']}/{v['positions']}" for g, v in ag["probes"].items())
        jm = "–" if ag["jaccard_mean"] is None else f"{ag['jaccard_mean']:.4f} ({ag['jaccard_min']:.4f})"
        lines.append(
            f"| {name} | {c['ingate_first']:.1f} / {c['ingate_best']:.1f} "
            f"| {c['llguidance_first']:.1f} / {c['llguidance_best']:.1f} "
            f"| {fm['ingate']:.0f} / {fm['llguidance']:.0f} "
            f"| {lane['ingate_states_visited']} / {lane['ingate_search_dfa_states']} "
            f"| {sk['both']} (+{sk['ingate_only']} ingate-only, +{sk['llguidance_only']} llg-only) "
            f"| {ag['positions_identical']}/{ag['positions_compared']} | {jm} "
            f"| {ag['distinct_tokens_differing']} "
            f"| {probes} |")
    o = report["one_time_ms"]
    lines += ["", f"One-time per vocabulary: ingate TokenTable {o['ingate_token_table']:.0f} ms, "
              f"llguidance tokenizer {o['llguidance_tokenizer']:.0f} ms; ingate warm-up phrase-policy "
              f"compile {o['ingate_warmup_phrase_compile']:.0f} ms. "
              f"Text: {report['text']['tokens']} tokens, {report['config']['positions']} positions walked."]
    for name, lane in report["policies"].items():
        f = lane["llguidance_default_limits_failure"]
        if f:
            lines.append(f"\nllguidance with default limits, policy {name}: fails at position "
                         f"{f['position']} "
                         f"({f['error']}); the figures above use step_lexer_fuel={LLG_STEP_FUEL:,}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK_POSITIONS} positions, fewer reps")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = ap.parse_args()
    reps = QUICK_REPS if args.quick else REPS
    compile_reps = 1 if args.quick else COMPILE_REPS

    engine = LlamaCppEngine()
    tb = engine.token_bytes()
    n_vocab = len(tb)
    t0 = ns()
    table = TokenTable(tb)
    table_ns = ns() - t0
    t0 = ns()
    tok = llguidance.llamacpp.lltokenizer_from_vocab(engine.llama_vocab)
    lltok_ns = ns() - t0
    # Pay first-use costs of ingate's phrase compiler (caches, imports) on a throwaway policy,
    # so per-policy compile times are what a server pays per new policy.
    t0 = ns()
    compile_policy(parse_policy(policy_yaml("warmup", phrases=["warm up"]), source="<bench:warmup>"))
    warm_ns = ns() - t0

    random_phrases = made_up_phrases(N_RANDOM_PHRASES, SEED)
    text = passage(random_phrases)
    ids = engine.tokenize(text)
    positions = ids[:QUICK_POSITIONS] if args.quick else ids

    two = ["Eiffel", "Acme Corp"]
    # The email pattern and the phone regex of commit 19e3fd0, as regexes: syntax that Python's re
    # and Rust's regex read alike. The built-in phone pattern now also needs a whole number (no
    # digit touching it), which a regex without lookaround cannot say to llguidance.
    pii_list = [BUILTIN_PATTERNS["email"][0], PHONE_19E3FD0]
    pii_rx = "|".join(f"(?:{r})" for r in pii_list)
    specs = [
        ("a: 2 phrases", policy_yaml("two-phrases", phrases=two), lark_never(phrase_regex(two))),
        ("b: email+phone", policy_yaml("email-phone", regexes=pii_list), lark_never(pii_rx)),
        ("c: 1000 phrases", policy_yaml("random-phrases", phrases=random_phrases),
         lark_never(phrase_regex(random_phrases))),
    ]
    lanes = [build_lane(n, p, g, table, tok, n_vocab, compile_reps) for n, p, g in specs]
    for lane in lanes:
        lane.default_limits = default_limits_failure(tok, lane.lark, positions, n_vocab)

    gc.collect()
    gc.disable()  # a collection inside a timed call would be charged to whichever engine was running
    t_walk = ns()
    try:
        for token in positions:
            for lane in lanes:
                step(lane, token, reps, n_vocab)
    finally:
        gc.enable()
    walk_s = (ns() - t_walk) / 1e9
    for lane in lanes:
        lane.states_visited = lane.gate.masks.cached_rows

    t0 = ns()
    for lane, key in zip(lanes, ["a", "b", "c"], strict=True):
        groups = PROBES.get(key) or {"ascii": phrase_probes(random_phrases, SEED), "nfkc": []}
        if args.quick:
            groups = {g: texts[:4] for g, texts in groups.items()}
        for lane_group, texts in groups.items():
            if texts:
                lane.probes[lane_group] = probe_agreement(lane, texts, engine, table, n_vocab)
    probe_s = (ns() - t0) / 1e9

    report = {
        "config": {"quick": args.quick, "positions": len(positions), "reps": reps, "seed": SEED,
                   "random_phrases": N_RANDOM_PHRASES, "compile_reps": compile_reps},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "numpy": np.__version__, "llguidance": llguidance.__version__,
                    "note": "noisy shared 2-core box; figures are per call, single thread"},
        "model": {"name": engine.name, "vocab_size": n_vocab},
        "text": {"chars": len(text), "tokens": len(ids)},
        "one_time_ms": {"ingate_token_table": table_ns / 1e6, "llguidance_tokenizer": lltok_ns / 1e6,
                        "ingate_warmup_phrase_compile": warm_ns / 1e6},
        "walk_seconds": round(walk_s, 2),
        "probe_seconds": round(probe_s, 2),
        "policies": {lane.name: lane_report(lane, tb) for lane in lanes},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(markdown(report))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
