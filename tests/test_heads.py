"""Trained admissibility heads: the fitting, the grouped folds, the threshold, the cache, the policy
fields, and the held-out check of `ingate calibrate`. These need no model: the encoder-backed and
real-model tests are in test_heads_model.py."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingate.labelled import normalized, overlap, read_rows
from ingate.policy import PolicyError, parse_policy
from ingate.semantic import head as H


def _blobs(n: int, d: int, seed: int, sep: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian classes along a random direction; admissible = the first class."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    adm = rng.random(n) < 0.6
    x = rng.normal(size=(n, d)) + np.where(adm, -sep, sep)[:, None] * direction
    return x.astype(np.float32), adm


@pytest.mark.parametrize("model", ["logistic", "mlp"])
def test_heads_separate_separable_data_and_are_deterministic(model):
    x, adm = _blobs(400, 24, 1)
    groups = [f"g{i // 2}" for i in range(len(x))]
    a = H.train(model, x, adm, groups, "test")
    b = H.train(model, x, adm, groups, "test")
    assert a.train_auroc > 0.95
    m = a.metrics(*a.choose_threshold(0.05))
    assert m.cv_auroc > 0.9
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])  # fixed seed, fixed folds: bit-identical
    assert np.array_equal(a.oof, b.oof)
    p = a.prob(x)
    assert p.shape == (len(x),) and np.all((p >= 0) & (p <= 1))


def test_head_on_random_labels_is_at_chance_out_of_fold():
    """Cross-validation is the honest figure: a head fitting noise scores well in-sample only."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    adm = rng.random(300) < 0.5
    h = H.train("logistic", x, adm, [str(i) for i in range(300)], "test")
    m = h.metrics(*h.choose_threshold(0.05))
    assert 0.35 < m.cv_auroc < 0.65
    assert h.train_auroc > m.cv_auroc + 0.05  # what the head learned of the noise shows in-sample only


def test_auto_threshold_keeps_out_of_fold_false_blocks_within_the_bound():
    x, adm = _blobs(500, 16, 7, sep=0.8)
    h = H.train("logistic", x, adm, [str(i) for i in range(500)], "test")
    for bound in (0.01, 0.05, 0.2):
        t, met = h.choose_threshold(bound)
        m = h.metrics(t, met)
        assert met and m.cv_false_block_rate <= bound + 1e-9
    assert h.choose_threshold(0.01)[0] >= h.choose_threshold(0.2)[0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from("abcdefghij"), min_size=4, max_size=60), st.randoms(use_true_random=False),
       st.integers(2, 6))
def test_folds_keep_groups_together_whatever_the_row_order(groups, rnd, k):
    fold = H.fold_of(groups, k)
    by_group = {g: {int(f) for f, gg in zip(fold, groups, strict=True) if gg == g} for g in groups}
    assert all(len(v) == 1 for v in by_group.values())
    shuffled = list(groups)
    rnd.shuffle(shuffled)
    again = dict(zip(shuffled, H.fold_of(shuffled, k).tolist(), strict=True))
    assert all(again[g] == next(iter(by_group[g])) for g in groups)


def test_too_few_sources_is_a_clear_error():
    x, adm = _blobs(20, 4, 2)
    with pytest.raises(H.HeadError, match="at least 2 sources"):
        H.train("logistic", x, adm, ["same"] * 20, "test")


# ---- the policy fields ----------------------------------------------------------------------------

RULE = """version: 1
name: p
rules:
  - id: harm
    semantic:
{body}
    action: resample
"""


def _train_file(tmp_path, rows=None):
    rows = rows or [{"text": f"text {i}", "admissible": i % 2 == 0, "source": f"s{i // 4}"} for i in range(40)]
    p = tmp_path / "train.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def test_head_policy_reads_its_file_and_hashes_it(tmp_path):
    _train_file(tmp_path)
    text = RULE.format(body="      head: {train: train.jsonl}\n      threshold: auto\n      max_false_block: 0.1")
    pol = parse_policy(text, "p.yaml", tmp_path)
    spec = pol.rules[0].semantic
    assert spec.head is not None and len(spec.head.rows) == 40 and spec.head.rows[1] == ("text 1", False, "s0", None)
    assert spec.head.model == "logistic" and spec.head.features == "encoder"
    assert spec.threshold is None and spec.max_false_block == 0.1
    before = pol.digest
    _train_file(tmp_path, [{"text": f"text {i}", "admissible": i % 3 == 0} for i in range(40)])
    assert parse_policy(text, "p.yaml", tmp_path).digest != before  # new data, new compiled policy


@pytest.mark.parametrize("body, words", [
    ("      head: {train: t.jsonl}\n      deny: [{concept: x, examples: [a]}]", "second semantic rule"),
    ("      deny: [{concept: x, examples: [a]}]\n      threshold: auto", "add head"),
    ("      deny: [{concept: x, examples: [a]}]\n      max_false_block: 0.1", "add head"),
    ("      head: {train: t.jsonl}\n      threshold: 0.5\n      max_false_block: 0.1",
     "only applies to threshold: auto"),
    ("      head: {train: t.jsonl}\n      threshold: -0.5", "probability in [0, 1]"),
    ("      head: {train: t.jsonl, model: forest}", "logistic"),
    ("      head: {train: t.jsonl, features: pixels}", "encoder"),
    ("      head: {train: missing.jsonl}", "does not exist"),
    ("      head: {train: one.jsonl}", "need both classes"),
])
def test_bad_head_rules_say_what_to_fix(tmp_path, body, words):
    (tmp_path / "t.jsonl").write_text('{"text": "a", "admissible": true}\n{"text": "b", "admissible": false}\n')
    (tmp_path / "one.jsonl").write_text('{"text": "a", "admissible": true}\n{"text": "b", "admissible": true}\n')
    with pytest.raises(PolicyError) as e:
        parse_policy(RULE.format(body=body), "p.yaml", tmp_path)
    assert words in str(e.value) and "p.yaml" in str(e.value) and "harm" in str(e.value)


def test_rows_carry_their_source(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("text,label,source\nhello,safe,a\nbad,unsafe,\n", encoding="utf-8")
    rows = read_rows(p)
    assert [(r.text, r.admissible, r.source) for r in rows] == [("hello", True, "a"), ("bad", False, None)]


# ---- the held-out check -----------------------------------------------------------------------------

WORDS = st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8)


@settings(max_examples=60, deadline=None)
@given(st.lists(WORDS, min_size=3, max_size=20), st.randoms(use_true_random=False))
def test_overlap_finds_a_training_text_however_it_is_cased_and_punctuated(words, rnd):
    text = " ".join(words)
    mangled = "".join(c.upper() if rnd.random() < 0.3 else c for c in text)
    mangled = mangled.replace(" ", rnd.choice([" ", "  ", ", ", " - "])) + rnd.choice(["", ".", "!"])
    train = ["something else entirely here", text, "yet another unrelated line"]
    hits = overlap(train, ["a wholly different sentence of words", mangled])
    assert [(h.held_out, h.train, h.similarity) for h in hits] == [(1, 1, 1.0)]
    assert normalized(mangled) == normalized(text)


def test_overlap_finds_near_duplicates_and_spares_new_text():
    base = ("I'm sorry, but I can't help with making weapons of any kind; if you are worried about your "
            "safety, please contact the local authorities")
    near = base.replace("local authorities", "the local authorities right away")
    new = "Paris is the capital of France and its tower was finished in 1889 for the world fair"
    hits = overlap([base, "unrelated text about gardening tomatoes"], [near, new])
    assert [(h.held_out, h.train) for h in hits] == [(0, 0)] and 0.9 <= hits[0].similarity < 1.0
