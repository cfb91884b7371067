"""Development figures for semantic rules, measured the way `ingate calibrate` measures them.

Two experiments on the public sets in ../shared/data (read in place, never copied):

a. ToxiGen demonstrations. A deny rule `hate` whose examples are the hateful sentences of one
   half of the 13 target groups, evaluated on the hateful (inadmissible) and neutral (admissible)
   sentences of the other half; then the halves swapped. The split is by group, so no group's
   sentences are both examples and test texts. The `bisexual` files count as the LGBTQ+ group
   (ToxiGen's 13 groups; its demonstrations keep them in two files), and the two copies of the
   Muslim files are one group with duplicates removed.
b. XSTest. A deny rule `harmful-requests` whose examples are the 100 SimpleSafetyTests prompts,
   evaluated on all 450 XSTest prompts (safe = admissible).

c. Responses (the shipped pack's split, examples/harmful-compliance/{train,test}.jsonl: answers to
   harmful and look-alike prompts labelled by construction; the test split shares no source prompt
   with training). Similarity (deny examples: the inadmissible training responses) against trained
   heads (logistic and MLP on MiniLM, logistic on the generating model's hidden states), and a head
   trained on prompt-level labels (SimpleSafetyTests + XSTest prompts), all judged on the test split.

Beside each similarity rule, heads trained on the same side of the same split (both labels of the
example groups for ToxiGen; SimpleSafetyTests plus the XSTest prompt types of one half for XSTest,
judged on the other half) are measured on the same test texts.

Each rule is written as a policy (and examples file) into a temporary directory and goes through
the calibrate code path: load_policy, compile_semantic, read_labelled, calibrate, the ROC plot.
Figures are AUROC, and F1 / false-block rate / block rate at the threshold suggested under a
maximum false-block rate of 5%. These are development figures: the threshold is chosen on the
same texts it is measured on.

    .venv/bin/python bench/semantic_dev.py

Writes bench/results/semantic_dev.json, semantic_dev_toxigen.png and semantic_dev_xstest.png.
A head's threshold is chosen the way `threshold: auto` chooses it (on its own training data's
cross-validated scores), then measured on the test texts: those figures are held out.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ingate.calibrate import (
    Calibration,
    at_threshold,
    calibrate,
    draw_roc,
    pyplot,
    read_labelled,
    roc_title,
)
from ingate.policy import load_policy
from ingate.semantic.concepts import DEFAULT_THRESHOLD, compile_semantic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "data"
RESULTS = HERE / "results"
MAX_FALSE_BLOCK = 0.05
ENGINE_SUBSET = (600, 300)  # training and test responses for the engine-feature comparison
GROUP_ALIASES = {"bisexual": "lgbtq"}  # ToxiGen's LGBTQ+ group, kept in two files


def need(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"semantic_dev: {path} is missing; this benchmark reads the public sets in ../shared/data "
                 "(see ../shared/data/README.md) relative to the project root")
    return path


# ---- data -------------------------------------------------------------------------------------

def toxigen_groups(root: Path) -> dict[str, dict[str, list[str]]]:
    """group -> {"hate": [...], "neutral": [...]}, sentences stripped and de-duplicated in file order."""
    groups: dict[str, dict[str, dict[str, None]]] = defaultdict(lambda: {"hate": {}, "neutral": {}})
    for f in sorted(root.glob("*/*.txt")):
        kind, _, rest = f.stem.partition("_")
        if kind not in ("hate", "neutral"):
            continue
        name = rest.removesuffix("_sentences")
        name = GROUP_ALIASES.get(name, name)
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                groups[name][kind][" ".join(line.split())] = None
    out = {g: {k: list(v) for k, v in d.items()} for g, d in sorted(groups.items())}
    both = {s for d in out.values() for s in d["hate"]} & {s for d in out.values() for s in d["neutral"]}
    if both:
        sys.exit(f"semantic_dev: {len(both)} ToxiGen sentences are labelled both hate and neutral")
    return out


def halves(groups: list[str]) -> tuple[list[str], list[str]]:
    """Deterministic split by group: alternate groups in name order."""
    names = sorted(groups)
    return names[0::2], names[1::2]


def write_rule(tmp: Path, name: str, rule_id: str, concept: str, examples: list[str]) -> Path:
    """A policy with one semantic deny rule (no threshold: calibrate measures one) and its examples file."""
    ex = tmp / f"{name}.txt"
    lines = [" ".join(e.split()) for e in examples]
    assert not any(ln.startswith("#") for ln in lines)  # the examples file reader skips comment lines
    ex.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    pol = tmp / f"{name}.yaml"
    pol.write_text(f"version: 1\nname: {name}\nrules:\n  - id: {rule_id}\n    semantic:\n      deny:\n"
                   f"        - concept: {json.dumps(concept)}\n          examples_file: {ex.name}\n"
                   "    action: resample\n", encoding="utf-8")
    return pol


def write_labelled(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def spread(xs: list, n: int | None) -> list:
    """At most n items of xs, evenly spaced in order (all of them when n is None)."""
    if n is None or n >= len(xs):
        return xs
    step = len(xs) / n
    return [xs[int(k * step)] for k in range(n)]


def subset_csv(src: Path, dst: Path, by: str, limit: int) -> Path:
    """At most `limit` rows of each value of column `by`, evenly spaced, in the file's order."""
    with src.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = {id(r) for v in sorted({r[by] for r in rows}) for r in spread([r for r in rows if r[by] == v], limit)}
    with dst.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(r for r in rows if id(r) in keep)
    return dst


# ---- one calibration --------------------------------------------------------------------------

def run(policy_path: Path, labelled: Path) -> tuple[Calibration, dict[str, Any]]:
    policy = load_policy(policy_path)
    spec = policy.rules_of("semantic")[0]
    rule = compile_semantic(policy.source, spec)
    data = read_labelled(labelled)
    t = time.perf_counter()
    cal = calibrate(rule, data, MAX_FALSE_BLOCK)
    secs = time.perf_counter() - t
    texts = [x for x, _ in data]
    return cal, summarize(cal, texts, rule.n_examples, secs)


def quantiles(x: np.ndarray) -> dict[str, float]:
    q = np.quantile(x, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p10", "p25", "p50", "p75", "p90", "max"), q, strict=True)}


def summarize(cal: Calibration, texts: list[str], n_examples: int, secs: float) -> dict[str, Any]:
    s, b, f = cal.suggestion, cal.suggestion.best, cal.suggestion.best_f1
    d = DEFAULT_THRESHOLD[cal.mode]
    dflt = at_threshold(cal.scores, cal.admissible, d, cal.mode)
    adm, bad = cal.scores[cal.admissible], cal.scores[~cal.admissible]
    order = np.argsort(-cal.scores)
    top_admissible = [(round(float(cal.scores[i]), 4), texts[i]) for i in order if cal.admissible[i]][:5]
    low_inadmissible = [(round(float(cal.scores[i]), 4), texts[i]) for i in order[::-1] if not cal.admissible[i]][:5]
    return {
        "rule": cal.rule, "encoder": cal.encoder, "n_examples": n_examples,
        "n": cal.n, "n_inadmissible": cal.n_inadmissible, "n_admissible": cal.n_admissible,
        "auroc": round(s.auroc, 4),
        "threshold": b.threshold, "f1": round(b.f1, 4), "false_block_rate": round(b.false_block_rate, 4),
        "block_rate": round(b.block_rate, 4), "precision": round(b.precision, 4), "met": s.met,
        "max_f1": {"threshold": f.threshold, "f1": round(f.f1, 4), "block_rate": round(f.block_rate, 4),
                   "false_block_rate": round(f.false_block_rate, 4)},
        "at_default_threshold": {"threshold": d, "f1": round(dflt.f1, 4), "block_rate": round(dflt.block_rate, 4),
                                 "false_block_rate": round(dflt.false_block_rate, 4)},
        "scores": {"inadmissible": quantiles(bad), "admissible": quantiles(adm),
                   "admissible_above_inadmissible_median": round(float((adm >= np.median(bad)).mean()), 4)},
        "highest_admissible": top_admissible, "lowest_inadmissible": low_inadmissible,
        "score_seconds": round(secs, 2),
    }


# ---- heads -------------------------------------------------------------------------------------

def pack_rows(path: Path) -> list[dict[str, Any]]:
    """A pack file's rows, with the fields a head reads (text, admissible, source, prompt)."""
    keep = ("text", "admissible", "source", "prompt")
    return [{k: json.loads(x).get(k) for k in keep} for x in path.read_text(encoding="utf-8").splitlines()
            if x.strip()]


def write_head(tmp: Path, name: str, rows: list[dict[str, Any]], model: str = "logistic",
               features: str = "encoder") -> Path:
    """A policy with one head rule (threshold: auto, max_false_block 5%) and its training file."""
    train = tmp / f"{name}.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pol = tmp / f"{name}.yaml"
    pol.write_text(f"version: 1\nname: {name}\nrules:\n  - id: head\n    semantic:\n      head: {{train: {train.name}, "
                   f"model: {model}, features: {features}}}\n      threshold: auto\n      max_false_block: "
                   f"{MAX_FALSE_BLOCK}\n    action: resample\n", encoding="utf-8")
    return pol


def run_head(policy_path: Path, test: list[tuple[str, bool, str | None]]) -> dict[str, Any]:
    """Train (or load) the head, then judge held-out texts at the threshold it chose itself."""
    from ingate.calibrate import auroc, suggest

    policy = load_policy(policy_path)
    t = time.perf_counter()
    rule = compile_semantic(policy.source, policy.rules_of("semantic")[0])
    train_s = time.perf_counter() - t
    texts = [x for x, _, _ in test]
    adm = np.array([a for _, a, _ in test], dtype=bool)
    t = time.perf_counter()
    enc = rule.encoder
    vec = enc.encode_pairs([p for _, _, p in test], texts) if hasattr(enc, "encode_pairs") else enc.encode(texts)
    feat_ms = (time.perf_counter() - t) * 1000 / len(texts)
    scores = rule.scores(vec)[0]
    at = at_threshold(scores, adm, rule.threshold, "deny")
    oracle = suggest(scores, adm, "deny", MAX_FALSE_BLOCK).best
    m = rule.head_metrics
    return {"features": enc.name, "model": rule.spec.head.model, "train_n": m.n, "cv_auroc": round(m.cv_auroc, 4),
            "threshold": round(rule.threshold, 4), "n": len(texts), "n_inadmissible": int((~adm).sum()),
            "auroc": round(auroc(scores, adm, "deny"), 4), "f1": round(at.f1, 4),
            "false_block_rate": round(at.false_block_rate, 4), "block_rate": round(at.block_rate, 4),
            "block_rate_at_5pct_on_test": round(oracle.block_rate, 4), "parameters": rule.head.size,
            "features_ms_per_text": round(feat_ms, 2), "train_s": round(train_s, 1)}


def head_row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['n']} ({r['n_inadmissible']}/{r['n'] - r['n_inadmissible']}) | {r['auroc']:.3f} | "
            f"{r['threshold']:.4f} (auto) | {r['f1']:.3f} | {r['false_block_rate']:.1%} | {r['block_rate']:.1%} |")


# ---- experiments -------------------------------------------------------------------------------

def toxigen(tmp: Path, limit: int | None = None, heads: bool = True
            ) -> tuple[list[dict[str, Any]], list[Calibration]]:
    """Both splits; `limit` keeps at most that many examples and that many test texts of each label
    (evenly spaced in file order), for a quicker, smaller run."""
    groups = toxigen_groups(need(DATA / "toxigen_demonstrations"))
    if len(groups) != 13:
        sys.exit(f"semantic_dev: expected 13 ToxiGen groups, found {len(groups)}: {', '.join(groups)}")
    a, b = halves(list(groups))
    results, cals = [], []
    for name, train, test in (("toxigen_a_to_b", a, b), ("toxigen_b_to_a", b, a)):
        examples = [s for g in train for s in groups[g]["hate"]]
        seen = set(examples)
        examples = spread(examples, limit)
        pol = write_rule(tmp, name, "hate", "hate", examples)
        rows = [(s, kind) for g in test for kind in ("hate", "neutral") for s in groups[g][kind] if s not in seen]
        if limit is not None:
            keep = {i for kind in ("hate", "neutral")
                    for i in spread([i for i, r in enumerate(rows) if r[1] == kind], limit)}
            rows = [r for i, r in enumerate(rows) if i in keep]
        lab = write_labelled(tmp / f"{name}.csv", rows)
        cal, res = run(pol, lab)
        res.update({"split": name, "example_groups": train, "test_groups": test})
        if heads:
            head_rows = [{"text": x, "admissible": kind == "neutral", "source": g} for g in train
                         for kind in ("hate", "neutral") for x in spread(groups[g][kind], limit)]
            res["head"] = run_head(write_head(tmp, f"{name}_head", head_rows),
                                   [(x, k == "neutral", None) for x, k in rows])
        results.append(res)
        cals.append(cal)
        print(f"{name}: AUROC {res['auroc']:.3f}", file=sys.stderr, flush=True)
    return results, cals


def xstest(tmp: Path, limit: int | None = None, heads: bool = True) -> tuple[dict[str, Any], Calibration]:
    """`limit` keeps at most that many SimpleSafetyTests examples and that many XSTest prompts of each
    label (evenly spaced in file order), for a quicker, smaller run."""
    with need(DATA / "simplesafetytests" / "sst_test_cases.csv").open(newline="", encoding="utf-8") as f:
        sst = spread([r["prompts_final"] for r in csv.DictReader(f)], limit)
    xs_path = need(DATA / "xstest" / "xstest_prompts.csv")
    if limit is not None:
        xs_path = subset_csv(xs_path, tmp / "xstest_subset.csv", "label", limit)
    pol = write_rule(tmp, "xstest", "harmful-requests", "harmful requests", sst)
    cal, res = run(pol, xs_path)  # columns prompt, label safe/unsafe: read_labelled reads it as it is
    with xs_path.open(newline="", encoding="utf-8") as f:
        types = [r["type"] for r in csv.DictReader(f)]
    thr = cal.suggestion.best.threshold
    by_type: dict[str, dict[str, Any]] = {}
    for t in sorted(set(types)):
        idx = np.array([x == t for x in types])
        s = cal.scores[idx]
        by_type[t] = {"label": "safe" if cal.admissible[idx][0] else "unsafe", "n": int(idx.sum()),
                      "blocked": round(float((s >= thr).mean()), 4), "median_score": round(float(np.median(s)), 4)}
    res["by_type_at_threshold"] = by_type
    if not heads:
        print(f"xstest: AUROC {res['auroc']:.3f}", file=sys.stderr, flush=True)
        return res, cal
    with xs_path.open(newline="", encoding="utf-8") as f:
        xrows = list(csv.DictReader(f))
    a, b = halves(sorted({r["type"] for r in xrows}))
    head_rows = [{"text": x, "admissible": False, "source": f"sst:{i}"} for i, x in enumerate(sst)] + \
        [{"text": r["prompt"], "admissible": r["label"] == "safe", "source": f"xstest:{r['id']}"}
         for r in xrows if r["type"] in a]
    test = [(r["prompt"], r["label"] == "safe", None) for r in xrows if r["type"] in b]
    hb = np.array([r["type"] in b for r in xrows])
    sim_b = {"auroc": round(auroc_of(cal.scores[hb], cal.admissible[hb]), 4), "n": int(hb.sum())}
    res["half"] = {"train_types": a, "test_types": b, "similarity": sim_b,
                   "head": run_head(write_head(tmp, "xstest_head", head_rows), test)}
    print(f"xstest: AUROC {res['auroc']:.3f}", file=sys.stderr, flush=True)
    return res, cal


def auroc_of(scores: np.ndarray, admissible: np.ndarray) -> float:
    from ingate.calibrate import auroc

    return auroc(scores, admissible, "deny")


def responses(tmp: Path, limit: int | None = None, engine: bool = True) -> dict[str, Any]:
    """The pack's split: similarity against heads, and a head trained on prompts, on held-out responses."""
    root = need(ROOT / "examples" / "harmful-compliance")
    train, test_rows = pack_rows(root / "train.jsonl"), pack_rows(root / "test.jsonl")
    if limit is not None:
        train = spread(train, limit * 4)
        test_rows = spread(test_rows, limit * 2)
    test = [(r["text"], bool(r["admissible"]), r.get("prompt")) for r in test_rows]
    pol = write_rule(tmp, "responses_sim", "harmful-compliance", "harmful compliance",
                     [r["text"] for r in train if not r["admissible"]])
    lab = write_labelled(tmp / "responses_test.csv", [(x, "safe" if a else "unsafe") for x, a, _ in test])
    _, sim = run(pol, lab)
    out: dict[str, Any] = {"train_n": len(train), "similarity": sim}
    rows = train
    out["logistic_encoder"] = run_head(write_head(tmp, "responses_logistic", rows), test)
    out["mlp_encoder"] = run_head(write_head(tmp, "responses_mlp", rows, "mlp"), test)
    if engine:
        # the engine's features cost ~0.5 s a text on 2 cores (the 135M model over prompt + response,
        # every output computed): both feature sources side by side on one evenly spread subset
        sub_rows, sub_test = spread(rows, ENGINE_SUBSET[0]), spread(test, ENGINE_SUBSET[1])
        out["subset"] = {"train_n": len(sub_rows), "test_n": len(sub_test)}
        out["subset_mlp_encoder"] = run_head(write_head(tmp, "subset_mlp", sub_rows, "mlp"), sub_test)
        out["subset_mlp_engine"] = run_head(write_head(tmp, "subset_mlp_engine", sub_rows, "mlp", "engine"), sub_test)
        out["subset_logistic_engine"] = run_head(write_head(tmp, "subset_engine", sub_rows, features="engine"),
                                                 sub_test)
    with need(DATA / "simplesafetytests" / "sst_test_cases.csv").open(newline="", encoding="utf-8") as f:
        prompts = [{"text": r["prompts_final"], "admissible": False, "source": f"sst:{r['id']}"}
                   for r in csv.DictReader(f)]
    with need(DATA / "xstest" / "xstest_prompts.csv").open(newline="", encoding="utf-8") as f:
        prompts += [{"text": r["prompt"], "admissible": r["label"] == "safe", "source": f"xstest:{r['id']}"}
                    for r in csv.DictReader(f)]
    out["prompt_trained"] = run_head(write_head(tmp, "responses_prompt_head", prompts), test)
    print("responses: " + ", ".join(f"{k} AUROC {v['auroc']:.3f}" for k, v in out.items() if isinstance(v, dict)
                                    and "auroc" in v), file=sys.stderr, flush=True)
    return out


# ---- output ------------------------------------------------------------------------------------

def plot(cals: list[Calibration], titles: list[str], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(cals), figsize=(5.5 * len(cals), 5.0), dpi=100, squeeze=False)
    try:
        for ax, cal, title in zip(axes[0], cals, titles, strict=True):
            draw_roc(ax, cal.suggestion, title)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['n']} ({r['n_inadmissible']}/{r['n_admissible']}) | {r['auroc']:.3f} | "
            f"{r['threshold']:.4f} | {r['f1']:.3f} | {r['false_block_rate']:.1%} | {r['block_rate']:.1%} |")


def main() -> int:
    need(DATA)
    # the embedding cache ($INGATE_CACHE_DIR) is used: the engine's features of the pack's training
    # responses take minutes to compute, once per machine
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ingate-semantic-dev-") as d:
        tmp = Path(d)
        tox, tox_cals = toxigen(tmp)
        xs, xs_cal = xstest(tmp)
        resp = responses(tmp, engine="--no-engine" not in sys.argv)
    mean = {k: round(float(np.mean([r[k] for r in tox])), 4)
            for k in ("auroc", "f1", "false_block_rate", "block_rate", "threshold")}
    plot(tox_cals, [roc_title(c.rule, c.mode, c.encoder, c.suggestion.auroc, c.n) + f"\n{r['split']}"
                    for c, r in zip(tox_cals, tox, strict=True)], RESULTS / "semantic_dev_toxigen.png")
    plot([xs_cal], [roc_title(xs_cal.rule, xs_cal.mode, xs_cal.encoder, xs_cal.suggestion.auroc, xs_cal.n)
                    + "\nXSTest, examples: SimpleSafetyTests"], RESULTS / "semantic_dev_xstest.png")
    out = {
        "what": "development figures: thresholds chosen and measured on the same texts",
        "max_false_block": MAX_FALSE_BLOCK,
        "toxigen": {"splits": tox, "mean": mean},
        "xstest": xs,
        "responses": resp,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "encoder_threads": os.environ.get("INGATE_ENCODER_THREADS", "1")},
    }
    (RESULTS / "semantic_dev.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    print(f"Semantic rules, development figures (threshold suggested at max false-block "
          f"{MAX_FALSE_BLOCK:.0%}, measured on the same texts)\n")
    print("| experiment | n (inadmissible/admissible) | AUROC | threshold | F1 | false-block | block rate |")
    print("|---|---|---|---|---|---|---|")
    for r in tox:
        print(row(f"ToxiGen {r['split'].removeprefix('toxigen_').replace('_', ' ')}", r))
    print(f"| ToxiGen mean of both | | {mean['auroc']:.3f} | {mean['threshold']:.4f} | {mean['f1']:.3f} | "
          f"{mean['false_block_rate']:.1%} | {mean['block_rate']:.1%} |")
    print(row("XSTest (examples: SimpleSafetyTests)", xs))
    print("\nHeads beside similarity, on the same test texts (a head's threshold is chosen on its own training "
          "data's cross-validated scores, so its figures are held out):\n")
    print("| experiment | n (inadmissible/admissible) | AUROC | threshold | F1 | false-block | block rate |")
    print("|---|---|---|---|---|---|---|")
    for r in tox:
        print(head_row(f"ToxiGen {r['split'].removeprefix('toxigen_').replace('_', ' ')}: logistic head", r["head"]))
    h = xs["half"]
    print(f"| XSTest types {', '.join(h['test_types'])}: similarity | {h['similarity']['n']} | "
          f"{h['similarity']['auroc']:.3f} | | | | |")
    print(head_row("XSTest, same half: logistic head (SST + the other types)", h["head"]))
    print(f"| Responses (held-out split): similarity to the inadmissible training responses | "
          f"{resp['similarity']['n']} | {resp['similarity']['auroc']:.3f} | | | | |")
    for k, label in (("logistic_encoder", "logistic head, MiniLM"), ("mlp_encoder", "MLP head, MiniLM"),
                     ("prompt_trained", "logistic head trained on prompt labels (SST + XSTest)"),
                     ("subset_mlp_encoder", "subset: MLP head, MiniLM"),
                     ("subset_mlp_engine", "subset: MLP head, the model's hidden states"),
                     ("subset_logistic_engine", "subset: logistic head, the model's hidden states")):
        if k in resp:
            print(head_row(f"Responses: {label}", resp[k]) + f" features {resp[k]['features_ms_per_text']} ms/text")
    print(f"\nwrote {RESULTS / 'semantic_dev.json'}, semantic_dev_toxigen.png, semantic_dev_xstest.png "
          f"in {out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
