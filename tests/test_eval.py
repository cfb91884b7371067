"""The evaluation harness (bench/evaluate.py, `make eval`): its checkers and its chunk filter as
properties, and a smoke run of every section end to end on the real model, the real upstream and
NeMo Guardrails in its own venv (`make nemo-env`, which `make test` builds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from evaluation import redteam, retraction  # noqa: E402
from ingate.policy import parse_policy  # noqa: E402

ITEMS = [item for item, _ in redteam.banned_items()]
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def test_the_suite_has_200_items_and_every_trick_equally() -> None:
    cases = redteam.suite()
    assert len({c.item for c in cases}) >= 200
    per_trick = {t: sum(c.trick == t for c in cases) for t in redteam.TRICKS}
    assert max(per_trick.values()) - min(per_trick.values()) <= 1
    assert len({c.seed for c in cases}) == len(cases)
    assert all(c.item in c.prompt for c in cases)


def test_checker_levels_read_spelling_tricks_as_a_reader_would() -> None:
    item = "Kalomir Labs"
    assert redteam.levels("We met KALOMIR   labs today", [item]) == dict.fromkeys(redteam.LEVELS, True)
    assert redteam.levels("K a l o m i r L a b s", [item]) == {"as_written": False, "no_whitespace": True,
                                                               "alnum_only": True}
    assert redteam.levels("K-a-l-o-m-i-r L-a-b-s", [item]) == {"as_written": False, "no_whitespace": False,
                                                               "alnum_only": True}
    assert redteam.levels("ｋａｌｏｍｉｒ ｌａｂｓ", [item])["as_written"]  # NFKC folds full-width letters
    assert not any(redteam.levels("Kalomir's lab", [item]).values())


@given(st.sampled_from(ITEMS), _TEXT, _TEXT, st.sampled_from(["", " ", "\n", "-", " - ", ". "]))
def test_a_stricter_level_finds_whatever_a_looser_one_does(item: str, before: str, after: str, sep: str) -> None:
    text = before + sep.join(item) + after
    lv = redteam.levels(text, [item])
    assert lv["alnum_only"]  # any separator between the characters: the reader still recovers it
    assert not lv["as_written"] or lv["no_whitespace"]
    assert not lv["no_whitespace"] or lv["alnum_only"]


@settings(max_examples=200)
@given(st.sampled_from(ITEMS), st.lists(st.text(min_size=1, max_size=6), max_size=60), st.integers(0, 60),
       st.integers(1, 12), st.integers(0, 6))
def test_the_chunk_filter_releases_no_whole_match_and_everything_when_clean(
        item: str, filler: list[str], at: int, chunk: int, extra: int) -> None:
    """Over any token split: with a context at least as long as the item in tokens, the filter
    releases no as-written occurrence; a clean stream is released whole."""
    pieces = [item[i:i + 2] for i in range(0, len(item), 2)]
    context = len(pieces) + extra
    at = min(at, len(filler))
    tokens = filler[:at] + pieces + filler[at:]
    check = lambda s: redteam.violates(s, item, "as_written")  # noqa: E731
    released, stopped = redteam.chunk_filter(tokens, check, chunk, context)
    assert stopped and not check(released)
    clean = [t for t in filler if not check(t)]
    if not check("".join(clean)):
        assert redteam.chunk_filter(clean, check, chunk, context) == ("".join(clean), False)


def test_the_evaluated_policies_parse_with_every_item() -> None:
    items = ITEMS
    ban = parse_policy(redteam.policy_yaml(items), source="<test>")
    assert [r.id for r in ban.rules] == ["bans"]
    for action in ("prevent", "stop"):
        pol = parse_policy(retraction.policy_yaml(items, action), source="<test>")
        assert [r.action for r in pol.rules] == [action, action]


@pytest.mark.slow
def test_a_smoke_run_writes_every_section_from_real_runs(tmp_path: Path) -> None:
    nemo = Path(os.environ.get("INGATE_NEMO_PYTHON", Path.home() / ".cache/ingate/nemo-0.24.1/bin/python"))
    assert nemo.exists(), f"NeMo Guardrails' venv is missing ({nemo}): `make nemo-env` builds it"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "evaluate.py"), "--smoke", "--out", str(tmp_path),
                           "--nemo-python", str(nemo)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = (tmp_path / "REPORT.md").read_text()
    for k in range(1, 8):
        assert f"\n## {k}. " in report, f"section {k} missing"
    assert "Rendering failed" not in report
    assert list((tmp_path / "img").glob("*.png")), "no plot written"
    red = json.loads((tmp_path / "eval_redteam.json").read_text())
    assert red["n_cases"] > 0 and all(set(r["released"]) == set(redteam.SYSTEMS) for r in red["rows"])
    # how many of a few prompts leak ungoverned depends on the CPU's last bits; that ingate releases
    # none is the invariant (tested at scale, where the ungoverned model does leak, in test_spelling)
    assert not any(r["violation"]["ingate"]["alnum_only"] for r in red["rows"])
    pii = json.loads((tmp_path / "eval_pii.json").read_text())
    assert pii["summary"]["ALL"]["values"] > 0
    peer = json.loads((tmp_path / "eval_peer.json").read_text())
    for row in peer["rows"]:  # NeMo really ran: one LLM call per prompt, on the same seed, no error
        for name in ("nemo_sf", "nemo_nosf"):
            run = row["systems"][name]
            assert run["error"] is None and len(run["llm_requests"]) == 1, run
            assert run["llm_requests"][0]["params"]["seed"] == row["seed"]
