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

Each rule is written as a policy (and examples file) into a temporary directory and goes through
the calibrate code path: load_policy, compile_semantic, read_labelled, calibrate, the ROC plot.
Figures are AUROC, and F1 / false-block rate / block rate at the threshold suggested under a
maximum false-block rate of 5%. These are development figures: the threshold is chosen on the
same texts it is measured on.

    .venv/bin/python bench/semantic_dev.py

Writes bench/results/semantic_dev.json, semantic_dev_toxigen.png and semantic_dev_xstest.png.
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
    spec = policy.semantic_rules[0]
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


# ---- experiments -------------------------------------------------------------------------------

def toxigen(tmp: Path, limit: int | None = None) -> tuple[list[dict[str, Any]], list[Calibration]]:
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
        results.append(res)
        cals.append(cal)
        print(f"{name}: AUROC {res['auroc']:.3f}", file=sys.stderr, flush=True)
    return results, cals


def xstest(tmp: Path, limit: int | None = None) -> tuple[dict[str, Any], Calibration]:
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
    print(f"xstest: AUROC {res['auroc']:.3f}", file=sys.stderr, flush=True)
    return res, cal


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
    os.environ.setdefault("INGATE_CACHE_DIR", "off")  # embed the examples here; write nothing outside bench/
    RESULTS.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ingate-semantic-dev-") as d:
        tmp = Path(d)
        tox, tox_cals = toxigen(tmp)
        xs, xs_cal = xstest(tmp)
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
    print(f"\nwrote {RESULTS / 'semantic_dev.json'}, semantic_dev_toxigen.png, semantic_dev_xstest.png "
          f"in {out['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
