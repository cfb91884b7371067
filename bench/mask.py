"""mask_upstream, measured: do models copy placeholders intact, is the answer restored exactly, and
what does masking add to the time to first token. One run, the embedded model and a real upstream
side by side (docs/masking.md quotes the results).

1. Copy-intact share. Prompts that ask a model to repeat, use or answer about values (e-mails,
   phones, cards) are masked; the model's own text (answer: keep, so nothing is restored) is
   searched for each placeholder it was given: intact (`[EMAIL_1]` as sent), mangled (a copy the
   restorer reads: `[EMAIL1]`, `[Email_1]`), or absent. On ingate's embedded engine and on
   llama-cpp-python's OpenAI-compatible server over the same GGUF (the real upstream).
2. Restoration fidelity. Each model text from 1 is restored in one piece and again split at every
   character boundary (2 parts) and at random into 3-8 parts: the share of splits whose streamed
   restoration equals the one-piece one, byte for byte.
3. Time to first token, plain upstream path against the same with mask_upstream (same policy
   otherwise, same prompts and seeds, order alternating): p50 and p99, and the masking step alone.

    .venv/bin/python bench/mask.py [--seeds 3] [--quick]

Writes bench/results/mask.json and bench/results/mask.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from server import pct

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from ingate.core import Request  # noqa: E402
from ingate.drivers.base import GenerationParams  # noqa: E402
from ingate.masking import Masking  # noqa: E402
from ingate.masking.placeholders import PLACEHOLDER_LIKE, norm_type  # noqa: E402
from ingate.policy import parse_policy  # noqa: E402
from ingate.sampling import SamplingParams  # noqa: E402
from ingate.upstream.config import upstream  # noqa: E402
from ingate.upstream.core import UpstreamCore  # noqa: E402
from upstreams import llama_server  # noqa: E402

BASE = """
version: 1
name: bench-mask-{answer}
{mask}
rules:
  - id: pii
    forbid: {{patterns: [email, phone, credit_card]}}
    action: redact
"""
VALUES = [("john.smith@example.com", "415-555-0132"), ("ana.lima@corp.org", "212-555-0187"),
          ("m.keller@mail.de", "650-555-0144"), ("li.wei@school.edu", "303-555-0161")]
PROMPTS = [
    "Repeat exactly this line: Contact John at {e} or {p}.",
    "Rewrite this more politely, keeping the contact details: call me at {p} or mail {e}.",
    "Write a one-sentence reply to the customer {e} saying we will call {p} tomorrow.",
    "Extract the e-mail address from this text and write only it: 'Hi, I am Ana, reach me at {e}.'",
    "Fill in: 'Dear customer, your account e-mail is ___ and your phone is ___.' E-mail: {e}. Phone: {p}.",
    "Repeat exactly: card 4111 1111 1111 1111 belongs to {e}.",
]


def _policy(answer: str, masked: bool):
    mask = f"mask_upstream: {{values: [email, phone, credit_card], answer: {answer}}}" if masked else ""
    return parse_policy(BASE.format(answer=answer, mask=mask))


def _params(seed: int, tokens: int) -> GenerationParams:
    return GenerationParams(max_tokens=tokens, sampling=SamplingParams(temperature=0.0 if seed == 0 else 0.7,
                                                                       seed=seed))


def copies(model_text: str, sent: dict[str, str]) -> tuple[int, int]:
    """(intact, mangled) copies among the placeholders `sent` (placeholder -> value)."""
    intact = sum(ph in model_text for ph in sent)
    mangled = 0
    for m in PLACEHOLDER_LIKE.finditer(model_text):
        if m.group(0) not in sent and m.group(2) and f"[{norm_type(m.group(1))}_{int(m.group(2))}]" in sent:
            mangled += 1
    return intact, mangled


def fidelity(mask: Masking, text: str, rng: random.Random) -> tuple[int, int]:
    """(splits restored exactly, splits tried) of one model text."""
    one = mask.restorer(None)
    want = one.feed(text) + one.flush() if one is not None else text
    ok = n = 0
    cuts = [[c] for c in range(1, len(text))] + [sorted(rng.sample(range(1, max(2, len(text))),
                                                                   min(len(text) - 1, rng.randint(2, 7))))
                                                 for _ in range(50) if len(text) > 8]
    for cs in cuts:
        r = mask.restorer(None)
        b = [0, *cs, len(text)]
        got = "".join(r.feed(text[b[i]:b[i + 1]]) for i in range(len(b) - 1)) + r.flush() if r else text
        ok, n = ok + (got == want), n + 1
    return ok, n


def copy_share(run, seeds: list[int], tokens: int, rng: random.Random) -> dict:
    """Section 1 and 2 on one model: `run(messages, policy, params) -> model text`."""
    keep = _policy("keep", True)
    sent_n = intact = mangled = ok = tried = 0
    for i, prompt in enumerate(PROMPTS):
        e, p = VALUES[i % len(VALUES)]
        msgs = [{"role": "user", "content": prompt.format(e=e, p=p)}]
        for seed in seeds:
            mask = Masking.start(keep)
            assert mask is not None
            mask.messages(msgs)
            text = run(msgs, keep, _params(seed, tokens))
            sent = dict(mask.vault.values)
            a, b = copies(text, sent)
            sent_n, intact, mangled = sent_n + len(sent), intact + a, mangled + b
            x, y = fidelity(mask, text, rng)
            ok, tried = ok + x, tried + y
    return {"placeholders_sent": sent_n, "intact": intact, "mangled_restorable": mangled,
            "intact_share": round(intact / max(1, sent_n), 3),
            "restored_share": round((intact + mangled) / max(1, sent_n), 3),
            "fidelity_splits": tried, "fidelity_exact": round(ok / max(1, tried), 4)}


def ttft(core: UpstreamCore, seeds: list[int], tokens: int) -> dict:
    """Both paths on every prompt and seed: a warm-up pass of each first (the upstream caches prompt
    prefixes, and section 1 already sent the masked prompts), then measured passes, order alternating;
    the difference is taken per pair, then its median."""
    plain, masked = _policy("restore", False), _policy("restore", True)
    out: dict[str, list[float]] = {"plain": [], "masked": []}
    diffs: list[float] = []
    cases = [([{"role": "user", "content": prompt.format(e=VALUES[i % len(VALUES)][0],
                                                         p=VALUES[i % len(VALUES)][1])}], seed)
             for i, prompt in enumerate(PROMPTS) for seed in seeds]
    for msgs, seed in cases:  # warm-up: the prompt caches hold both forms
        for pol in (plain, masked):
            core.run(Request(msgs, pol, _params(seed, 4)))
    for k, (msgs, seed) in enumerate(cases):
        got = {}
        for name, pol in [("plain", plain), ("masked", masked)][::1 if k % 2 else -1]:
            res = core.run(Request(msgs, pol, _params(seed, tokens)))
            if res.ttft_s is not None:
                got[name] = res.ttft_s * 1000
                out[name].append(got[name])
        if len(got) == 2:
            diffs.append(got["masked"] - got["plain"])
    step = []
    m = _policy("restore", True)
    for i in range(300):
        e, p = VALUES[i % len(VALUES)]
        msgs = [{"role": "system", "content": "You are a support agent. " * 20},
                {"role": "user", "content": PROMPTS[i % len(PROMPTS)].format(e=e, p=p)}]
        t = time.perf_counter()
        mk = Masking.start(m)
        assert mk is not None
        mk.messages(msgs)
        step.append((time.perf_counter() - t) * 1000)
    return {"plain_ttft_ms_p50": pct(out["plain"], 50), "plain_ttft_ms_p99": pct(out["plain"], 99),
            "masked_ttft_ms_p50": pct(out["masked"], 50), "masked_ttft_ms_p99": pct(out["masked"], 99),
            "added_ttft_ms_p50": pct(diffs, 50), "added_ttft_ms_p99": pct(diffs, 99),
            "mask_step_ms_p50": pct(step, 50), "mask_step_ms_p99": pct(step, 99), "runs": len(diffs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--upstream", default=None, help="an OpenAI-compatible base URL (default: start one)")
    args = ap.parse_args()
    seeds = list(range(1 if args.quick else args.seeds))
    rng = random.Random(0)
    results: dict = {"seeds": seeds, "prompts": len(PROMPTS), "tokens": args.tokens}
    from ingate.runtime import Runtime

    rt = Runtime.load(use_audit=False)
    results["embedded"] = copy_share(lambda m, pol, p: rt.run(m, pol, p).text, seeds, args.tokens, rng)
    rt.close()
    import tempfile

    with tempfile.TemporaryDirectory() as d, llama_server(Path(d)) as url:
        core = UpstreamCore(upstream("smol", args.upstream or url, "smol", kind="llama.cpp", retries=1), None)
        results["upstream"] = copy_share(lambda m, pol, p: core.run(Request(m, pol, p)).text, seeds, args.tokens,
                                         rng)
        results["ttft"] = ttft(core, seeds, args.tokens)
        core.close()
    out = HERE / "results"
    (out / "mask.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "mask.md").write_text(table(results))
    print(table(results))


def table(r: dict) -> str:
    rows = ["| model | placeholders sent | copied intact | + mangled, restorable | restoration exact (splits) |",
            "|---|---|---|---|---|"]
    for name in ("embedded", "upstream"):
        x = r[name]
        rows.append(f"| {name} | {x['placeholders_sent']} | {x['intact_share']:.1%} | {x['restored_share']:.1%} | "
                    f"{x['fidelity_exact']:.2%} ({x['fidelity_splits']}) |")
    t = r["ttft"]
    rows += ["", "| upstream path | TTFT p50 (ms) | TTFT p99 (ms) |", "|---|---|---|",
             f"| plain | {t['plain_ttft_ms_p50']:.1f} | {t['plain_ttft_ms_p99']:.1f} |",
             f"| with mask_upstream | {t['masked_ttft_ms_p50']:.1f} | {t['masked_ttft_ms_p99']:.1f} |",
             f"| added, per pair | {t['added_ttft_ms_p50']:.1f} | {t['added_ttft_ms_p99']:.1f} |",
             "", f"The masking step alone (a ~500-character request): p50 {t['mask_step_ms_p50']:.2f} ms, p99 "
             f"{t['mask_step_ms_p99']:.2f} ms. Pairs: {t['runs']}; seeds {r['seeds']}, {r['prompts']} prompts, "
             f"{r['tokens']} tokens.", ""]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
