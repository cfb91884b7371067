"""Trained admissibility heads: a small classifier over a text's features, trained at compile time.

Similarity to examples measures what a text is about; a refusal to build a bomb is about bombs. A
head learns from labelled responses what a text *does* (carries out a harmful request, or declines
it). It maps one feature vector (an encoder embedding, or the generating model's own hidden state)
to P(inadmissible):

* `logistic`: L2-regularized logistic regression, fitted by Newton's method (exact, no step size);
* `mlp`: one ReLU hidden layer, full-batch Adam from a seeded start.

Both standardize the features first and weight the two classes equally. Training is deterministic
(fixed seed, fixed fold assignment) and cached on disk by content hash, beside the concept
embeddings: a restart loads the weights instead of training again.

Cross-validation is grouped: rows sharing a `source` (the prompt a response answers) fall in one
fold, so a figure never scores a response whose sibling was trained on. The out-of-fold
probabilities give the head's honest metrics, and `threshold: auto` picks from them the threshold
that blocks the most inadmissible texts with at most `max_false_block` of the admissible ones blocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from ingate.calibrate import at_threshold, auroc, suggest
from ingate.paths import cache_dir
from ingate.semantic.cache import cached_embeddings

FORMAT = 1  # bump when the training or the stored layout changes: old cache entries are ignored
SEED = 20261203
FOLDS = 5
L2_GRID = (1.0, 10.0, 100.0, 1000.0)  # logistic: penalties tried by grouped cross-validation (the best AUROC wins)
MLP_HIDDEN = 64
MLP_EPOCHS = 300
MLP_LR = 0.01
MLP_DECAY = 1e-3


class HeadError(ValueError):
    """A head that cannot be trained; the message says what to fix."""


class _Stderr:
    """sys.stderr as it is when written to: a default argument of sys.stderr binds the stream of
    import time, which a test's capture may since have closed."""

    def write(self, s: str) -> int:
        return sys.stderr.write(s)

    def flush(self) -> None:
        sys.stderr.flush()


STDERR = cast(IO[str], _Stderr())


# ---- the two models ---------------------------------------------------------------------------

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def _class_weights(y: np.ndarray) -> np.ndarray:
    n, pos = len(y), float(y.sum())
    return np.where(y > 0.5, n / (2.0 * max(pos, 1.0)), n / (2.0 * max(n - pos, 1.0)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> dict[str, np.ndarray]:
    """Weights minimizing the class-balanced log loss + l2/2 |w|^2 (Newton steps, damped by a line search)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    sw = _class_weights(y)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    w = np.zeros(d + 1)

    def loss(w: np.ndarray) -> float:
        z = xb @ w
        return float(np.sum(sw * (np.logaddexp(0.0, z) - y * z)) + 0.5 * np.sum(reg * w * w))

    cur = loss(w)
    for _ in range(iters):
        p = _sigmoid(xb @ w)
        g = xb.T @ (sw * (p - y)) + reg * w
        h = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-4 and (new := loss(w - t * step)) > cur:
            t *= 0.5
        w = w - t * step
        if cur - new < 1e-9 * max(1.0, abs(cur)):
            cur = new
            break
        cur = new
    return {"w": w[:-1].astype(np.float32), "b": np.float32(w[-1]).reshape(1)}


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = MLP_HIDDEN, epochs: int = MLP_EPOCHS,
            lr: float = MLP_LR, decay: float = MLP_DECAY, seed: int = SEED) -> dict[str, np.ndarray]:
    """One ReLU hidden layer, class-balanced log loss, full-batch Adam with weight decay."""
    rng = np.random.default_rng(seed)
    n, d = x.shape
    params = {"w1": rng.normal(0.0, np.sqrt(2.0 / d), (d, hidden)), "b1": np.zeros(hidden),
              "w2": rng.normal(0.0, np.sqrt(1.0 / hidden), hidden), "b2": np.zeros(1)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    sw = _class_weights(y) / n
    for t in range(1, epochs + 1):
        h_pre = x @ params["w1"] + params["b1"]
        h = np.maximum(h_pre, 0.0)
        p = _sigmoid(h @ params["w2"] + params["b2"][0])
        dz = sw * (p - y)
        dh = np.outer(dz, params["w2"]) * (h_pre > 0)
        grads = {"w2": h.T @ dz + decay * params["w2"], "b2": np.array([dz.sum()]),
                 "w1": x.T @ dh + decay * params["w1"], "b1": dh.sum(axis=0)}
        for k, g in grads.items():
            m[k] = 0.9 * m[k] + 0.1 * g
            v2[k] = 0.999 * v2[k] + 0.001 * g * g
            params[k] = params[k] - lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(v2[k] / (1 - 0.999 ** t)) + 1e-8)
    return {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}


def predict(model: str, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """P(inadmissible) for each row of standardized features."""
    if model == "logistic":
        return _sigmoid(x @ params["w"] + params["b"][0])
    h = np.maximum(x @ params["w1"] + params["b1"], 0.0)
    return _sigmoid(h @ params["w2"] + params["b2"][0])


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]] = {
    "logistic": fit_logistic, "mlp": fit_mlp}


# ---- folds and metrics ------------------------------------------------------------------------

def fold_of(groups: Sequence[str], k: int = FOLDS) -> np.ndarray:
    """A fold per row: the groups, ordered by a hash of their name, dealt round-robin (deterministic,
    independent of row order); every row of a group lands in its group's fold."""
    names = sorted(set(groups), key=lambda g: hashlib.sha256(g.encode("utf-8")).hexdigest())
    fold = {g: i % k for i, g in enumerate(names)}
    return np.array([fold[g] for g in groups], dtype=np.int64)


@dataclass(frozen=True)
class HeadMetrics:
    n: int
    n_inadmissible: int
    groups: int
    folds: int
    train_auroc: float  # in-sample: how well the head fits its own data
    cv_auroc: float  # out-of-fold, grouped by source: the figure to trust
    threshold: float  # chosen on out-of-fold probabilities (threshold: auto), or the rule's own
    cv_f1: float
    cv_block_rate: float
    cv_false_block_rate: float
    met: bool  # some threshold keeps out-of-fold false blocks within max_false_block
    train_s: float


# ---- one trained head ---------------------------------------------------------------------------

@dataclass
class Head:
    model: str
    features: str  # the featurizer's name (an encoder, or "engine:...")
    mean: np.ndarray
    scale: np.ndarray
    params: dict[str, np.ndarray]
    oof: np.ndarray  # out-of-fold P(inadmissible), for the threshold and the metrics
    labels: np.ndarray  # admissible, per training row
    groups: int
    folds: int
    train_auroc: float
    train_s: float
    l2: float | None = None  # the logistic penalty cross-validation chose
    cache_hit: bool = False

    @property
    def size(self) -> int:
        """Parameters, counting the standardization."""
        return int(sum(v.size for v in self.params.values()) + self.mean.size + self.scale.size)

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.params.values()) + self.mean.nbytes + self.scale.nbytes)

    def prob(self, vectors: np.ndarray) -> np.ndarray:
        """P(inadmissible) of each feature row."""
        x = (np.asarray(vectors, dtype=np.float32) - self.mean) / self.scale
        return predict(self.model, self.params, x).astype(np.float64)

    def choose_threshold(self, max_false_block: float) -> tuple[float, bool]:
        s = suggest(self.oof, self.labels, "deny", max_false_block)
        return s.best.threshold, s.met

    def metrics(self, threshold: float, met: bool = True) -> HeadMetrics:
        p = at_threshold(self.oof, self.labels, threshold, "deny")
        return HeadMetrics(n=len(self.labels), n_inadmissible=int((~self.labels).sum()), groups=self.groups,
                           folds=self.folds, train_auroc=self.train_auroc,
                           cv_auroc=auroc(self.oof, self.labels, "deny"), threshold=threshold, cv_f1=p.f1,
                           cv_block_rate=p.block_rate, cv_false_block_rate=p.false_block_rate, met=met,
                           train_s=self.train_s)


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean.astype(np.float32), np.where(scale > 1e-6, scale, 1.0).astype(np.float32)


def _out_of_fold(model: str, x: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int, opt: float | None
                 ) -> np.ndarray:
    oof = np.empty(len(y))
    for f in range(k):
        tr, te = fold != f, fold == f
        if len(np.unique(y[tr])) < 2:
            raise HeadError(f"fold {f + 1} of {k} has one class only in its training part; add texts of both "
                            "labels from more sources")
        mean, scale = _standardize(x[tr])
        params = _fit(model, (x[tr] - mean) / scale, y[tr], opt)
        oof[te] = predict(model, params, (x[te] - mean) / scale)
    return oof


def _fit(model: str, x: np.ndarray, y: np.ndarray, opt: float | None) -> dict[str, np.ndarray]:
    return fit_logistic(x, y, opt) if model == "logistic" and opt is not None else FITTERS[model](x, y)


def train(model: str, x: np.ndarray, admissible: np.ndarray, groups: Sequence[str], features: str,
          progress: IO[str] | None = None) -> Head:
    """Grouped k-fold out-of-fold probabilities (a logistic head's penalty chosen among L2_GRID by
    their AUROC), then the head fitted on every row."""
    if model not in FITTERS:
        raise HeadError(f"unknown head model {model!r}; use one of {', '.join(FITTERS)}")
    t0 = time.perf_counter()
    x = np.asarray(x, dtype=np.float64)
    y = (~np.asarray(admissible, dtype=bool)).astype(np.float64)  # 1 = inadmissible
    labels = np.asarray(admissible, dtype=bool)
    n_groups = len(set(groups))
    k = min(FOLDS, n_groups)
    if k < 2:
        raise HeadError("a head needs texts from at least 2 sources to cross-validate its threshold")
    fold = fold_of(groups, k)
    best: tuple[float, float | None, np.ndarray] | None = None
    for opt in (L2_GRID if model == "logistic" else (None,)):
        oof = _out_of_fold(model, x, y, fold, k, opt)
        auc = auroc(oof, labels, "deny")
        if progress is not None:
            print(f"ingate: training head ({model}{f', l2 {opt:g}' if opt is not None else ''}): {k}-fold "
                  f"AUROC {auc:.3f}", file=progress, flush=True)
        if best is None or auc > best[0]:
            best = (auc, opt, oof)
    assert best is not None
    _, opt, oof = best
    mean, scale = _standardize(x)
    params = _fit(model, (x - mean) / scale, y, opt)
    fitted = predict(model, params, (x - mean) / scale)
    return Head(model=model, features=features, mean=mean, scale=scale, params=params, oof=oof, labels=labels,
                groups=n_groups, folds=k, train_auroc=auroc(fitted, labels, "deny"),
                train_s=time.perf_counter() - t0, l2=opt)


# ---- the on-disk cache ----------------------------------------------------------------------------

def head_key(model: str, features: str, version: str, rows: Sequence[tuple[str, bool, str]]) -> str:
    h = hashlib.sha256(f"head{FORMAT}\0{model}\0{features}\0{version}\0{SEED}\0{FOLDS}\0{L2_GRID}\0"
                       f"{MLP_HIDDEN}\0{MLP_EPOCHS}\0{MLP_LR}\0{MLP_DECAY}\0".encode())
    for text, ok, group in rows:
        h.update(f"{int(ok)}\0{group}\0{text}\0".encode())
    return h.hexdigest()


def _save(path: Path, head: Head) -> None:
    arrays: dict[str, Any] = {f"p_{k}": v for k, v in head.params.items()}
    meta = {"model": head.model, "features": head.features, "groups": head.groups, "folds": head.folds,
            "train_auroc": head.train_auroc, "train_s": head.train_s, "l2": head.l2}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        arrays.update(mean=head.mean, scale=head.scale, oof=head.oof, labels=head.labels,
                      meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> Head | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            params = {k[2:]: z[k] for k in z.files if k.startswith("p_")}
            return Head(model=meta["model"], features=meta["features"], mean=z["mean"], scale=z["scale"],
                        params=params, oof=z["oof"], labels=z["labels"].astype(bool), groups=int(meta["groups"]),
                        folds=int(meta["folds"]), train_auroc=float(meta["train_auroc"]),
                        train_s=float(meta["train_s"]), l2=meta.get("l2"), cache_hit=True)
    except (OSError, ValueError, KeyError):
        return None  # unreadable: train again and overwrite


def group_name(text: str, source: str | None) -> str:
    """The split unit of a row: its source, else its own normalized text."""
    return f"source:{source}" if source else "text:" + " ".join(text.casefold().split())


def row_features(encoder: Any, rows: Sequence[tuple[str, bool, str | None, str | None]],
             progress: IO[str] | None = STDERR) -> np.ndarray:
    """The rows' features, cached by content: a featurizer that reads the prompt (the engine's
    hidden states) sees each response after its prompt; a sentence encoder sees the text alone."""
    texts = [r[0] for r in rows]
    if not hasattr(encoder, "encode_pairs"):
        return cached_embeddings(encoder.name, encoder.version, encoder.dim, texts, encoder.encode)[0]
    prompts = [r[3] for r in rows]
    keys = [f"{p or ''}\0{t}" for p, t in zip(prompts, texts, strict=True)]

    def compute(_: Sequence[str]) -> np.ndarray:
        out = []
        step = 64
        for i in range(0, len(texts), step):
            out.append(encoder.encode_pairs(prompts[i:i + step], texts[i:i + step]))
            if progress is not None and len(texts) > step:
                print(f"ingate: {encoder.name} features {min(i + step, len(texts))}/{len(texts)}", file=progress,
                      flush=True)
        return np.vstack(out)

    return cached_embeddings(encoder.name, encoder.version, encoder.dim, keys, compute)[0]


def trained_head(model: str, encoder: Any, rows: Sequence[tuple[str, bool, str | None, str | None]],
                 progress: IO[str] | None = STDERR) -> Head:
    """The head for these rows and features, from the cache, or trained now (only then are the
    rows' features needed: the engine's take minutes)."""
    keyed = [(f"{r[3] or ''}\0{r[0]}" if hasattr(encoder, "encode_pairs") else r[0], r[1], group_name(r[0], r[2]))
             for r in rows]
    d = cache_dir()
    path = d / "heads" / f"{head_key(model, encoder.name, encoder.version, keyed)}.npz" if d is not None else None
    if path is not None and path.exists() and (head := _load(path)) is not None \
            and head.mean.shape == (encoder.dim,) and len(head.labels) == len(rows):
        return head
    head = train(model, row_features(encoder, rows, progress), np.array([r[1] for r in rows], dtype=bool),
                 [g for _, _, g in keyed], encoder.name, progress)
    if path is not None:
        try:
            _save(path, head)
        except OSError:
            pass  # a read-only cache costs a retrain next start, nothing else
    return head
