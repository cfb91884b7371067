"""Measure a semantic rule's threshold on labelled texts: AUROC, block and false-block rates, F1.

A labelled file holds texts marked admissible or not. Each text is scored as a whole against the
rule (its highest similarity to any concept example); the threshold suggested is the one that
blocks the most inadmissible texts while blocking at most `max_false_block` of the admissible
ones. The positive class is "inadmissible" throughout. A deny rule blocks when score >= threshold,
an allow_only rule when score < threshold; metrics orient the score accordingly (risk = score for
deny, -score for allow_only), so a higher risk always means "more likely blocked".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ingate.labelled import CalibrationError, read_labelled  # noqa: F401  (re-exported)

BATCH = 64
PROGRESS_EVERY = 320  # texts between progress lines on stderr


# ---- scoring ----------------------------------------------------------------------------------

def score_texts(rule: Any, texts: Sequence[str], batch: int = BATCH, progress: IO[str] | None | bool = True
                ) -> np.ndarray:
    """Each text's score against a compiled SemanticRule, the text scored as a whole."""
    out = np.empty(len(texts), dtype=np.float64)
    for i in range(0, len(texts), batch):
        chunk = list(texts[i:i + batch])
        out[i:i + len(chunk)] = rule.scores(rule.encoder.encode(chunk))[0]
        done = i + len(chunk)
        if progress and len(texts) > PROGRESS_EVERY and (done % PROGRESS_EVERY == 0
                                                                      or done == len(texts)):
            out_to = sys.stderr if progress is True else progress  # stderr as it is now, not at import
            print(f"ingate calibrate: scored {done}/{len(texts)} texts", file=out_to, flush=True)
    return out


# ---- metrics ----------------------------------------------------------------------------------

def risk(scores: np.ndarray, mode: str) -> np.ndarray:
    """Higher means more likely blocked: the score for deny, -score for allow_only."""
    s = np.asarray(scores, dtype=np.float64)
    return s if mode == "deny" else -s


def blocked(scores: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s >= threshold if mode == "deny" else s < threshold


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank of the last member of each tie group
    return ((ends - counts + 1 + ends) / 2.0)[inv]


def auroc(scores: np.ndarray, admissible: np.ndarray, mode: str = "deny") -> float:
    """Probability that an inadmissible text is riskier than an admissible one (ties count half)."""
    r = risk(scores, mode)
    pos = ~np.asarray(admissible, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        raise CalibrationError("AUROC needs admissible and inadmissible texts")
    ranks = average_ranks(r)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


@dataclass(frozen=True)
class Point:
    """What a rule does at one threshold. Positive class: inadmissible."""

    threshold: float
    block_rate: float  # recall: share of inadmissible texts blocked
    false_block_rate: float  # share of admissible texts blocked
    precision: float  # share of blocked texts that are inadmissible (1.0 when nothing is blocked)
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


def at_threshold(scores: np.ndarray, admissible: np.ndarray, threshold: float, mode: str) -> Point:
    b = blocked(scores, threshold, mode)
    bad = ~np.asarray(admissible, dtype=bool)
    tp, fp = int((b & bad).sum()), int((b & ~bad).sum())
    fn, tn = int((~b & bad).sum()), int((~b & ~bad).sum())
    return Point(threshold=float(threshold),
                 block_rate=tp / (tp + fn) if tp + fn else 0.0,
                 false_block_rate=fp / (fp + tn) if fp + tn else 0.0,
                 precision=tp / (tp + fp) if tp + fp else 1.0,
                 f1=2 * tp / (2 * tp + fp + fn) if tp else 0.0,
                 tp=tp, fp=fp, fn=fn, tn=tn)


def candidates(scores: np.ndarray, decimals: int = 4) -> np.ndarray:
    """Thresholds between consecutive distinct scores (every distinct blocking decision), rounded
    so that the value written into a policy gives exactly the figures reported for it; plus one
    below the lowest and one above the highest score."""
    u = np.unique(np.asarray(scores, dtype=np.float64))
    mids = (u[:-1] + u[1:]) / 2.0
    ends = [max(-1.0, u[0] - 0.01), min(1.0, u[-1] + 0.01)]
    return np.unique(np.round(np.concatenate([mids, ends]), decimals))


def sweep(scores: np.ndarray, admissible: np.ndarray, mode: str,
          thresholds: Sequence[float] | np.ndarray | None = None) -> list[Point]:
    ts = candidates(scores) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return [at_threshold(scores, admissible, float(t), mode) for t in ts]


@dataclass(frozen=True)
class Suggestion:
    best: Point  # most inadmissible texts blocked with false_block_rate <= max_false_block
    best_f1: Point  # the highest F1 over every candidate threshold
    max_false_block: float
    met: bool  # False: no threshold keeps false blocks within max_false_block; best has the fewest
    auroc: float
    points: list[Point]  # every candidate, for the ROC curve


def suggest(scores: np.ndarray, admissible: np.ndarray, mode: str, max_false_block: float = 0.05) -> Suggestion:
    """The threshold that blocks the most inadmissible texts while blocking at most
    `max_false_block` of the admissible ones (ties: fewer false blocks, then higher precision)."""
    if not 0.0 <= max_false_block <= 1.0:
        raise CalibrationError(f"max false-block rate must be between 0 and 1, got {max_false_block}")
    scores = np.asarray(scores, dtype=np.float64)
    admissible = np.asarray(admissible, dtype=bool)
    pts = sweep(scores, admissible, mode)
    ok = [p for p in pts if p.false_block_rate <= max_false_block + 1e-12]
    met = bool(ok)
    if not ok:  # admissible texts score like the examples themselves: no threshold in [-1, 1] spares them
        low = min(p.false_block_rate for p in pts)
        ok = [p for p in pts if p.false_block_rate == low]
    best = max(ok, key=lambda p: (p.block_rate, -p.false_block_rate, p.precision))
    best_f1 = max(pts, key=lambda p: (p.f1, -p.false_block_rate))
    return Suggestion(best=best, best_f1=best_f1, max_false_block=max_false_block, met=met,
                      auroc=auroc(scores, admissible, mode), points=pts)


def table_thresholds(scores: np.ndarray, sug: Suggestion, n: int = 8) -> list[float]:
    """About n round thresholds across the bulk of the scores, plus the suggested and max-F1 ones."""
    lo, hi = np.quantile(np.asarray(scores, dtype=np.float64), [0.05, 0.95])
    grid = np.round(np.linspace(lo, hi, n), 2)
    return sorted({float(t) for t in grid} | {sug.best.threshold, sug.best_f1.threshold})


# ---- plot -------------------------------------------------------------------------------------

def draw_roc(ax: Any, sug: Suggestion, title: str) -> None:
    """The ROC curve on a matplotlib Axes, the suggested (and max-F1) operating point marked."""
    pts = sorted(sug.points, key=lambda p: (p.false_block_rate, p.block_rate))
    fpr = [0.0] + [p.false_block_rate for p in pts] + [1.0]
    tpr = [0.0] + [p.block_rate for p in pts] + [1.0]
    ax.plot(fpr, tpr, color="tab:blue", lw=1.8, label="ROC")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    ax.axvline(sug.max_false_block, color="tab:red", lw=0.8, ls=":",
               label=f"max false-block {sug.max_false_block:.0%}")
    b = sug.best
    ax.plot([b.false_block_rate], [b.block_rate], "o", color="tab:red", ms=8,
            label=f"suggested {b.threshold:g}: blocks {b.block_rate:.0%}, false-blocks {b.false_block_rate:.1%}")
    f = sug.best_f1
    if f.threshold != b.threshold:
        ax.plot([f.false_block_rate], [f.block_rate], "s", color="tab:green", ms=6,
                label=f"max F1 {f.threshold:g} (F1 {f.f1:.2f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-block rate (admissible texts blocked)")
    ax.set_ylabel("block rate (inadmissible texts blocked)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(sug: Suggestion, path: str | Path, title: str) -> Path:
    """Write the ROC curve with the suggested operating point marked as a PNG; returns the path."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=100)
    try:
        draw_roc(ax, sug, title)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, format="png")
    finally:
        plt.close(fig)
    return out


def roc_title(rule_id: str, mode: str, encoder: str, auc: float, n: int) -> str:
    return f"rule {rule_id} ({mode}), encoder {encoder}\nAUROC {auc:.3f} on {n} labelled texts"


# ---- one call for the CLI and the benchmarks, and its report ------------------------------------

@dataclass(frozen=True)
class Calibration:
    rule: str
    mode: str
    encoder: str
    n: int
    n_admissible: int
    n_inadmissible: int
    scores: np.ndarray
    admissible: np.ndarray
    suggestion: Suggestion
    current: Point | None  # at the threshold the policy sets, if it sets one

    def to_json(self, png: str) -> dict[str, Any]:
        b = self.suggestion.best
        return {"auroc": self.suggestion.auroc, "f1": b.f1, "threshold": b.threshold,
                "false_block_rate": b.false_block_rate, "n": self.n, "rule": self.rule,
                "encoder": self.encoder, "png": png}

    def report(self, source: str, labelled: str, png: str) -> list[str]:
        """What `ingate calibrate` prints: the figures, a table of thresholds, the one to set and where."""
        sug, b, f = self.suggestion, self.suggestion.best, self.suggestion.best_f1
        blocked = "score >= threshold" if self.mode == "deny" else "score < threshold"
        out = [f"rule {self.rule} ({self.mode}: blocked when {blocked}) in {source}; encoder {self.encoder}",
               f"labelled texts: {labelled}: n={self.n}, {self.n_inadmissible} inadmissible, "
               f"{self.n_admissible} admissible",
               f"AUROC {sug.auroc:.3f}", "",
               f"  {'threshold':>9}  {'blocks inadmissible':>19}  {'false-blocks':>12}  {'F1':>5}"]
        for t in table_thresholds(self.scores, sug):
            p = at_threshold(self.scores, self.admissible, t, self.mode)
            mark = "  <- suggested" if t == b.threshold else ("  <- max F1" if t == f.threshold else "")
            out.append(f"  {t:>9.4f}  {p.block_rate:>19.1%}  {p.false_block_rate:>12.1%}  {p.f1:>5.3f}{mark}")
        out.append("")
        if (c := self.current) is not None:
            out.append(f"current threshold {c.threshold:g}: blocks {c.block_rate:.1%} of inadmissible texts, "
                       f"false-blocks {c.false_block_rate:.1%} of admissible ones, F1 {c.f1:.3f}")
        if not sug.met:
            out.append(f"no threshold keeps the false-block rate within {sug.max_false_block:.1%}: some admissible "
                       "texts score as high as the concept examples; the one below blocks the fewest")
        return out + [
            f"suggested threshold {b.threshold:g} (blocks the most inadmissible texts with false-block rate <= "
            f"{sug.max_false_block:.1%}): blocks {b.block_rate:.1%} of inadmissible texts, false-blocks "
            f"{b.false_block_rate:.1%} of admissible ones, precision {b.precision:.3f}, F1 {b.f1:.3f}",
            f"max-F1 threshold {f.threshold:g}: F1 {f.f1:.3f}, blocks {f.block_rate:.1%}, "
            f"false-blocks {f.false_block_rate:.1%}",
            f"to use it, set under the rule's semantic: in {source} (rule {self.rule}):\n"
            f"      threshold: {b.threshold:g}",
            f"ROC curve written to {png}"]


def calibrate(rule: Any, data: Sequence[tuple[str, bool]], max_false_block: float = 0.05,
              progress: IO[str] | None | bool = True) -> Calibration:
    """Score labelled texts against a compiled SemanticRule and suggest its threshold."""
    texts = [t for t, _ in data]
    adm = np.array([a for _, a in data], dtype=bool)
    scores = score_texts(rule, texts, progress=progress)
    sug = suggest(scores, adm, rule.mode, max_false_block)
    cur = at_threshold(scores, adm, rule.threshold, rule.mode) if rule.calibrated else None
    return Calibration(rule=rule.rule_id, mode=rule.mode, encoder=rule.encoder.name, n=len(texts),
                       n_admissible=int(adm.sum()), n_inadmissible=int((~adm).sum()), scores=scores,
                       admissible=adm, suggestion=sug, current=cur)
