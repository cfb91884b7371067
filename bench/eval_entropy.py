"""Is per-token entropy worth anything as a signal of a wrong answer? (`make eval-entropy`)

Facts come from the PyPI package `countryinfo` (country -> capital, about 250 pairs; no hub
download). The embedded model is asked "What is the capital of X?" and each answer is marked
right when it names the capital (accents, case and punctuation ignored; for a capital of several
words, its longest word of 5+ letters also counts). Then:

1. Signals, from the greedy answers: mean, max and first-answer-token entropy (the token after
   "... is", else the first token). AUROC for telling wrong answers from right ones (wrong is the
   positive class; higher entropy should mean wrong).
2. Accuracy against coverage when answering only the least uncertain share, per signal.
3. The real rule: greedy generation under entropy budgets (set at quantiles of the ungoverned
   answers' total entropy); a budget spent means an abstention (finish_reason content_filter).
   Each budget is one (coverage, accuracy) point against ungoverned. And sampled generation
   (temperature 0.8) with `on_exceed: narrow` at two bounds against the same seeds ungoverned.

    .venv/bin/python bench/eval_entropy.py [--quick] [--n N]

Writes bench/results/entropy_eval.json, entropy_eval.md and entropy_eval.png.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from ingate.calibrate import auroc
from ingate.drivers.base import GenerationParams, Result
from ingate.drivers.full import generate
from ingate.gate.compile import compile_policy
from ingate.gate.gate import Gate
from ingate.policy import NONE_POLICY, parse_policy
from ingate.runtime import Runtime
from ingate.sampling import SamplingParams

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUESTION = "What is the capital of {country}? Answer with the name of the city."


def facts() -> list[tuple[str, str]]:
    try:
        import countryinfo
    except ImportError:
        sys.exit("eval-entropy needs the package countryinfo: `make eval-entropy` installs it "
                 "(or .venv/bin/pip install countryinfo)")
    out = set()
    for c in countryinfo.all_countries():
        try:
            name, cap = c.name(), c.capital()
        except Exception:  # a record without the field: skip it
            continue
        if name and cap:
            out.add((str(name), str(cap)))
    return sorted(out)


def norm(s: str) -> str:
    s = unicodedata.normalize("NFKD", s)
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).casefold()
    return re.sub(r"[^a-z0-9]+", " ", s).strip()


def is_right(answer: str, capital: str, country: str) -> bool:
    """The capital is named where the answer is: after the first " is " ("The capital of X is Y"),
    else anywhere but in the country's own name (so "Andorra" does not answer "Andorra la Vella")."""
    c, k = norm(capital), norm(country)
    at = answer.find(" is ")
    t = f" {norm(answer[at + 4:at + 80] if at >= 0 else answer)} "
    if at < 0 and k and k not in c:
        t = t.replace(f" {k} ", " ")
    if f" {c} " in t:
        return True
    words = [w for w in c.split() if len(w) >= 5]
    return len(c.split()) > 1 and bool(words) and f" {max(words, key=len)} " in t


def first_answer_token(res: Result, table: list[bytes], tokens: list[int]) -> int:
    """Index of the token that starts the answer: after the last ' is ' of the first sentence."""
    raw = b"".join(table[t] for t in tokens)
    first = raw.split(b".")[0]
    at = first.rfind(b" is ")
    if at < 0:
        return 0
    target, pos = at + 3, 0  # the answer begins at the space after "is"
    for k, t in enumerate(tokens):
        if pos >= target:
            return k
        pos += len(table[t])
    return 0


def coverage_curve(signal: list[float], right: list[bool]) -> list[tuple[float, float]]:
    order = np.argsort(np.asarray(signal), kind="stable")
    r = np.asarray(right, dtype=float)[order]
    out = []
    for c in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        k = max(1, int(round(c * len(r))))
        out.append((round(k / len(r), 3), round(float(r[:k].mean()), 4)))
    return out


def ask_question(rt: Runtime, question: str, policy, sp: SamplingParams, max_tokens: int) -> tuple[Result, Gate]:
    """One chat question through the gate under `policy`, with per-token entropy recorded."""
    prompt = rt.engine.chat_prompt([{"role": "user", "content": question}])
    gate = Gate(compile_policy(policy), rt.table)
    return generate(rt.engine, prompt, GenerationParams(max_tokens=max_tokens, sampling=sp, entropy=True),
                    gate), gate


def ask(rt: Runtime, country: str, policy, sp: SamplingParams, max_tokens: int) -> tuple[Result, Gate]:
    return ask_question(rt, QUESTION.format(country=country), policy, sp, max_tokens)


def entropy_signals(res: Result, gate: Gate, table: list[bytes]) -> dict[str, float]:
    """Mean, max, first-answer-token and total entropy of one answer (nats; 0.0 when none was recorded)."""
    ent = [h for h in res.entropy or [] if h == h]
    fa = first_answer_token(res, table, gate.tokens)
    return {"mean": float(np.mean(ent)) if ent else 0.0, "max": float(np.max(ent)) if ent else 0.0,
            "first": float(res.entropy[fa]) if res.entropy else 0.0, "total": float(np.sum(ent))}


def signal_stats(rows: list[dict], signals: tuple[str, ...] = ("mean", "max", "first")) -> dict[str, dict]:
    """Per signal: AUROC for telling wrong answers (the positive class) from right ones, and the
    accuracy-against-coverage curve. Needs right and wrong answers both."""
    right = [r["right"] for r in rows]
    # a right answer is the "admissible" class: AUROC that a wrong answer carries more entropy
    return {s: {"auroc": round(auroc(np.asarray([r[s] for r in rows]), np.asarray(right)), 4),
                "curve": coverage_curve([r[s] for r in rows], right)} for s in signals}


def budget_policy(budget: float):
    return parse_policy("version: 1\nname: eval\nrules:\n  - id: uncertainty\n    entropy: "
                        f"{{budget: {budget:.4f}, baseline: 0.0}}\n    action: stop\n", source="<eval>")


def bound_policy(bound: float):
    return parse_policy("version: 1\nname: eval\nrules:\n  - id: uncertainty\n    entropy: "
                        f"{{max_token_entropy: {bound}, on_exceed: narrow}}\n", source="<eval>")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=0, help="questions (default: all)")
    ap.add_argument("--quick", action="store_true", help="40 questions: a smoke run")
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    qa = facts()
    n = 40 if args.quick else (args.n or len(qa))
    qa = qa[:: max(1, len(qa) // n)][:n] if n < len(qa) else qa
    rt = Runtime.load(use_audit=False)
    t0 = time.perf_counter()
    greedy = SamplingParams()
    print(f"eval-entropy: {len(qa)} questions, model {rt.engine.name}", file=sys.stderr)

    rows = []
    for i, (country, cap) in enumerate(qa):
        res, gate = ask(rt, country, NONE_POLICY, greedy, args.max_tokens)
        rows.append({"country": country, "capital": cap, "answer": res.text.strip(),
                     "right": is_right(res.text, cap, country),
                     **entropy_signals(res, gate, rt.table.token_bytes)})
        if (i + 1) % 25 == 0:
            acc = np.mean([r["right"] for r in rows])
            print(f"  ungoverned greedy [{i + 1}/{len(qa)}] accuracy so far {acc:.3f}", file=sys.stderr)
    right = [r["right"] for r in rows]
    acc0 = float(np.mean(right))
    signals = signal_stats(rows)

    # the rule itself: budgets at quantiles of the ungoverned answers' total entropy
    totals = [r["total"] for r in rows]
    budgets = sorted({round(float(np.percentile(totals, q)), 2) for q in (25, 50, 75, 90)})
    governed = []
    for b in budgets:
        pol = budget_policy(b)
        answered, texts = [], []
        for country, cap in qa:
            res, _ = ask(rt, country, pol, greedy, args.max_tokens)
            texts.append([res.text, res.finish_reason])
            if res.finish_reason != "content_filter":
                answered.append(is_right(res.text, cap, country))
        cov = len(answered) / len(qa)
        governed.append({"budget": b, "coverage": round(cov, 4),
                         "accuracy": round(float(np.mean(answered)), 4) if answered else None, "answers": texts})
        print(f"  budget {b}: coverage {cov:.3f}, accuracy {governed[-1]['accuracy']}", file=sys.stderr)

    # narrowing under sampling, same seeds
    sampled: dict = {}
    sampled_answers: dict = {}
    configs = (("ungoverned", NONE_POLICY), ("narrow 1.0", bound_policy(1.0)), ("narrow 2.0", bound_policy(2.0)))
    for label, pol in configs:
        ok, texts = [], []
        for i, (country, cap) in enumerate(qa):
            res, _ = ask(rt, country, pol, SamplingParams(temperature=0.8, seed=i), args.max_tokens)
            ok.append(is_right(res.text, cap, country))
            texts.append(res.text)
        sampled[label] = round(float(np.mean(ok)), 4)
        sampled_answers[label] = texts
        print(f"  sampled T=0.8 {label}: accuracy {sampled[label]}", file=sys.stderr)

    out = {"model": rt.engine.name, "questions": len(qa), "source": "countryinfo (PyPI), country -> capital",
           "question": QUESTION, "accuracy_greedy": round(acc0, 4), "signals": signals,
           "budgets": governed, "sampled_accuracy": sampled, "seconds": round(time.perf_counter() - t0, 1),
           "greedy_answers": [{k: r[k] for k in ("country", "capital", "answer", "right", "mean", "max", "first")}
                              for r in rows],
           "sampled_answers": sampled_answers,
           "examples_wrong": [{k: r[k] for k in ("country", "capital", "answer")} for r in rows if not r["right"]][:8],
           "examples_right": [{k: r[k] for k in ("country", "capital", "answer")} for r in rows if r["right"]][:5]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "entropy_eval.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    plot(out, RESULTS / "entropy_eval.png")
    md = render(out)
    (RESULTS / "entropy_eval.md").write_text(md)
    print(md)
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for s, label in (("mean", "mean entropy"), ("max", "max entropy"), ("first", "first-answer-token entropy")):
        c = out["signals"][s]["curve"]
        ax.plot([x for x, _ in c], [y for _, y in c], marker=".",
                label=f"answer the least uncertain, by {label} (AUROC {out['signals'][s]['auroc']:.2f})")
    pts = [(g["coverage"], g["accuracy"]) for g in out["budgets"] if g["accuracy"] is not None]
    ax.scatter([x for x, _ in pts], [y for _, y in pts], marker="s", color="black", zorder=5,
               label="entropy budget rule (real runs)")
    ax.axhline(out["accuracy_greedy"], color="grey", ls="--", label=f"ungoverned ({out['accuracy_greedy']:.2f})")
    ax.set_xlabel("coverage (share of questions answered)")
    ax.set_ylabel("accuracy of the answers given")
    ax.set_title(f"Capitals, {out['model']}, {out['questions']} questions (development figures)", fontsize=9)
    ax.set_xlim(0, 1.02)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render(out: dict) -> str:
    sig = out["signals"]
    lines = [f"Capitals from `countryinfo`, {out['questions']} questions, {out['model']}, greedy: accuracy "
             f"{out['accuracy_greedy']:.3f}.", "",
             "| signal (higher = wrong) | AUROC | accuracy at 30% / 50% / 80% coverage |", "|---|---|---|"]
    for s, label in (("mean", "mean token entropy"), ("max", "max token entropy"),
                     ("first", "first-answer-token entropy")):
        c = dict(sig[s]["curve"])
        lines.append(f"| {label} | {sig[s]['auroc']:.3f} | {c.get(0.3, '-')} / {c.get(0.5, '-')} / {c.get(0.8, '-')} |")
    lines += ["", "| entropy budget (nats, baseline 0) | coverage | accuracy of the answers given |", "|---|---|---|",
              f"| none (ungoverned) | 1.0 | {out['accuracy_greedy']:.3f} |"]
    for g in out["budgets"]:
        lines.append(f"| {g['budget']} | {g['coverage']} | {g['accuracy']} |")
    sa = out["sampled_accuracy"]
    lines += ["", "Sampled at temperature 0.8, same seeds: accuracy " + ", ".join(f"{k} {v}" for k, v in sa.items())
              + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
