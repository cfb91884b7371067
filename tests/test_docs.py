"""The docs stay true: the site builds with --strict, every link and anchor resolves as GitHub reads
it, and the commands the pages show run as shown.

What the model writes differs between CPUs, so an `ingate generate` example runs for a few tokens
and only its exit status and its `[ingate] finish=` line (or, with --json, the documented keys)
are checked. `ingate check` and `ingate calibrate` print what the policy compiler and the encoder
decide, so their output is checked line by line: words and whole numbers exactly; decimals
(scores, AUROC, thresholds, rates) within a tolerance, since the encoder's floats move with the
CPU's kernels; a `...` in the docs stands for anything; and whether embeddings or a head came from
the cache is not checked. A heredoc (`cat > FILE <<'EOF'`) in a block is written first, into the
temporary directory the block's commands run in, beside `examples/` and `../shared`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import INGATE, ROOT

DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [ROOT / "README.md", *PAGES]
MKDOCS = Path(sys.executable).with_name("mkdocs")

# ingate's subcommands a console block may show, and whether this file runs them
RUN = {"check", "calibrate", "generate", "audit", "doctor"}
NOT_RUN = {"serve": "a server: tests/test_server.py and tests/test_upstream.py run it",
           "chat": "a REPL"}
GENERATE_TOKENS = "8"
DECISIONS = r"[\w./-]+ \w+ x\d+(, [\w./-]+ \w+ x\d+)*"
FINISH_LINE = re.compile(rf"^\[ingate\] finish=(stop|length|content_filter|tool_calls)(; decisions: {DECISIONS})?$")
REFUSED = re.compile(r"^\[ingate\] finish=content_filter; decisions: [\w./-]+ refuse x1$")
DECIMAL = re.compile(r"-?\d+\.\d+")
CACHE = [(re.compile(r"loaded from the cache|trained in \d+(\.\d+)? s \(cached for the next start\)"), "<cache>"),
         (re.compile(r"from the cache|embedded in \d+(\.\d+)? s"), "<cache>")]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ---- Markdown: fences, headings, links ---------------------------------------------------------------

def fenced(text: str):
    """(line number, info string, lines) of every fenced block; and the text outside them."""
    blocks, outside, cur, info, start = [], [], None, "", 0
    for n, line in enumerate(text.split("\n"), 1):
        fence = re.match(r"^\s*```(.*)$", line)
        if cur is None and fence:
            cur, info, start = [], fence.group(1).strip(), n
        elif cur is not None and fence and not fence.group(1).strip():
            blocks.append((start, info, cur))
            cur = None
        elif cur is not None:
            cur.append(line)
        else:
            outside.append((n, line))
    assert cur is None, f"a fence opened at line {start} is never closed"
    return blocks, outside


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower-cased, punctuation other than
    - and _ dropped, each space a hyphen (MkDocs's own slugs are checked by the strict build)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link reads as its text
    text = text.replace("`", "").replace("**", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    _, outside = fenced(path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for _, line in outside:
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path):
    """(line number, target) of every inline link and image outside code."""
    _, outside = fenced(path.read_text())
    for n, line in outside:
        line = re.sub(r"`[^`]*`", "", line)
        for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            yield n, m.group(1)


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_every_relative_link_and_anchor_resolves(path):
    bad = []
    for n, target in links(path):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:: not fetched (no network)
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{rel(path)}:{n}: {target}: {file} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{rel(path)}:{n}: {target}: {rel(dest)} has no heading with the anchor #{anchor}")
        elif anchor and dest.suffix != ".md":
            bad.append(f"{rel(path)}:{n}: {target}: an anchor into a file that is not Markdown")
    assert not bad, "\n".join(bad)


def test_the_readme_is_a_front_door_that_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split("\n")) <= 250, "the README is the front door: move detail to a page under docs/"
    linked = {(ROOT / t.partition("#")[0]).resolve() for _, t in links(ROOT / "README.md") if not t.startswith("#")}
    missing = [rel(p) for p in PAGES if p.resolve() not in linked]
    assert not missing, f"the README links no page {missing}"


def test_the_site_builds_with_no_warning(tmp_path):
    if not MKDOCS.exists():
        pytest.fail(f"{MKDOCS} is missing: `make docs` installs MkDocs (the `docs` extra; the `test` extra has it too)")
    r = subprocess.run([str(MKDOCS), "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    for page in PAGES:
        assert (tmp_path / "site" / page.with_suffix(".html").name).exists(), page.name


def test_the_entropy_plot_in_the_docs_is_the_benchmarks():
    # the site serves only docs/, so docs/img holds a copy; make eval-entropy refreshes both
    assert (DOCS / "img" / "entropy_eval.png").read_bytes() == (ROOT / "bench/results/entropy_eval.png").read_bytes()


# ---- the CLI reference against the CLI ---------------------------------------------------------------

@pytest.mark.parametrize("command", ["generate", "chat", "check", "calibrate", "audit tail", "audit export",
                                     "audit find", "audit scrub", "serve", "doctor"])
def test_the_cli_page_names_every_flag(command):
    r = subprocess.run([INGATE, *command.split(), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    usage = r.stdout.split("\n\n")[0]  # argparse's usage lists every option (the help text may name vLLM's)
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage)) - {"--help"}
    page = (DOCS / "cli.md").read_text()
    missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![a-z0-9-])", page))
    assert not missing, f"`ingate {command}` takes {missing}, which docs/cli.md does not name"


# ---- console blocks ----------------------------------------------------------------------------------

@dataclass
class Step:
    line: int
    command: str = ""                     # the command line, continuations joined
    output: list[str] = field(default_factory=list)
    file: str = ""                        # or a heredoc: the file it writes
    content: str = ""

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def ingate(self) -> str | None:
        """The ingate subcommand this step runs, or None for another program (not parsed: a curl's
        quoted body may run over several lines)."""
        words = self.command.split()
        return words[1] if len(words) > 1 and Path(words[0]).name == "ingate" else None


@dataclass
class Block:
    path: Path
    line: int
    steps: list[Step]

    @property
    def id(self) -> str:
        return f"{rel(self.path)}:{self.line}"


def parse_console(path: Path, start: int, lines: list[str]) -> Block:
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line, n = lines[i], start + 1 + i
        if not line.startswith("$ "):
            if steps and not steps[-1].file:
                steps[-1].output.append(line)
            i += 1
            continue
        command = line[2:]
        heredoc = re.match(r"^cat > (\S+) <<'?(\w+)'?$", command)
        if heredoc:
            end = lines.index(heredoc.group(2), i + 1)
            steps.append(Step(n, file=heredoc.group(1), content="\n".join(lines[i + 1:end]) + "\n"))
            i = end + 1
            continue
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        steps.append(Step(n, command=command))
        i += 1
    for s in steps:
        while s.output and not s.output[-1].strip():
            s.output.pop()
    return Block(path, start, steps)


def console_blocks() -> list[Block]:
    out = []
    for path in MARKDOWN:
        blocks, _ = fenced(path.read_text())
        out += [parse_console(path, n, lines) for n, info, lines in blocks if info == "console"]
    return out


def unique(blocks: list[Block]) -> list[Block]:
    """The README repeats the overview's tour: a block shown twice is run once."""
    seen: dict[str, Block] = {}
    for b in blocks:
        seen.setdefault(repr([(s.command, s.output, s.file, s.content) for s in b.steps]), b)
    return list(seen.values())


BLOCKS = unique([b for b in console_blocks() if any(s.ingate for s in b.steps)])


def test_every_ingate_command_in_a_console_block_is_run_or_says_why_not():
    unknown = [f"{b.id}: {s.command}" for b in BLOCKS for s in b.steps
               if s.ingate and s.ingate not in RUN and s.ingate not in NOT_RUN]
    assert not unknown, f"add these subcommands to RUN (and run them below) or to NOT_RUN: {unknown}"
    assert sum(1 for b in BLOCKS for s in b.steps if s.ingate == "check") >= 3


def expected_exit(step: Step) -> int:
    return 2 if any(line.startswith("ingate: error:") for line in step.output) else 0


def line_matches(want: str, got: str) -> str | None:
    """None when `got` reads as `want`, else why not (see the module's docstring)."""
    for pattern, repl in CACHE:
        want, got = pattern.sub(repl, want), pattern.sub(repl, got)
    want, got = want.rstrip(), got.rstrip()
    parts = [re.escape(p) for p in DECIMAL.split(want)]
    pattern = r"(-?\d+\.\d+)".join(parts)
    pattern = re.sub(r"(\\ )*" + re.escape(re.escape("...")) + r"(\\ )*", ".*", pattern)  # spaces around ... too
    m = re.fullmatch(pattern, got)
    if not m:
        return "differs"
    for w, g in zip(DECIMAL.findall(want), m.groups(), strict=True):
        w_, g_ = float(w), float(g)
        if abs(w_ - g_) > max(0.05 * abs(w_), 0.02):
            return f"{g} is not within 5% of the documented {w}"
    return None


def workdir(tmp_path: Path, block: Block) -> tuple[Path, dict[str, str]]:
    """A directory to run the block in: its heredocs' files, examples/ and ../shared as the repository
    has them; and an environment with an audit of its own."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")
    shared = ROOT.parent / "shared"
    if shared.exists():
        (tmp_path / "shared").symlink_to(shared)
    env = {**os.environ, "INGATE_AUDIT": str(tmp_path / "audit.sqlite3"), "NO_COLOR": "1"}
    return work, env


def run_step(step: Step, work: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = [INGATE, *step.argv[1:]]
    if step.ingate == "generate":
        if "--max-tokens" in argv:
            argv[argv.index("--max-tokens") + 1] = GENERATE_TOKENS
        else:
            argv += ["--max-tokens", GENERATE_TOKENS]
    for arg in argv:
        if arg.startswith("../shared/"):
            assert (work / arg).exists(), f"{arg} is missing: the docs' command reads the project's shared data"
    return subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)


def check_output(block: Block, step: Step, r: subprocess.CompletedProcess) -> None:
    where = f"{block.id}, line {step.line}: {step.command}"
    assert r.returncode == expected_exit(step), f"{where}\nexit {r.returncode}\n{r.stdout}\n{r.stderr}"
    if step.ingate in ("check", "calibrate"):
        # the report on stdout; an error on stderr (beside calibrate's progress lines, not shown)
        got = (r.stdout if r.returncode == 0 else r.stderr).rstrip("\n").split("\n")
        if r.returncode:
            got = [line for line in got if line.startswith("ingate: error:")]
        assert len(got) == len(step.output), (f"{where}\nthe docs show {len(step.output)} line(s), the command "
                                              f"printed {len(got)}:\n" + "\n".join(got))
        for want, line in zip(step.output, got, strict=True):
            why = line_matches(want, line)
            assert why is None, f"{where}\n  docs: {want}\n  got:  {line}\n  ({why})"
    elif step.ingate == "generate" and "--json" in step.argv:
        out = json.loads(r.stdout)
        assert {"text", "finish_reason", "decisions", "entropy", "stats"} <= out.keys(), where
        assert {"completion_tokens", "tokens_per_s", "gate_us_p50", "gate_us_p99", "held_max_chars", "rollbacks",
                "ttft_ms"} <= out["stats"].keys(), where
        assert len(out["entropy"]) == out["stats"]["completion_tokens"], where
    elif step.ingate == "generate":
        # The summary comes only when a rule acted, which is the model's doing: its shape is checked
        # when it comes. A refusal before generation is the policy's (the encoder judged the prompt), so
        # it is checked as shown, and so is any other line of ingate's own (the entropy legend).
        err = r.stderr.split("\n")
        finish = [line for line in err if line.startswith("[ingate] finish=")]
        assert len(finish) <= 1 and all(FINISH_LINE.match(line) for line in finish), f"{where}\n{r.stderr}"
        for line in step.output:
            if line.startswith("[ingate] ") and (REFUSED.match(line) or not line.startswith("[ingate] finish=")):
                assert line in err, f"{where}\n  docs: {line}\n  got:\n{r.stderr}"
    elif step.ingate == "doctor":
        for label in re.findall(r"^ok\s+(\w+):", "\n".join(step.output), re.M):
            assert re.search(rf"^ok\s+{label}:", r.stdout, re.M), f"{where}: no `ok {label}:` line\n{r.stdout}"


def replay(block: Block, tmp_path: Path, which) -> int:
    work, env = workdir(tmp_path, block)
    ran = 0
    for step in block.steps:
        if step.file:
            (work / step.file).write_text(step.content)
        elif step.ingate in RUN and which(step):
            check_output(block, step, run_step(step, work, env))
            ran += 1
    return ran


def quick(step: Step) -> bool:
    """A check of a policy without semantic rules: the compiler alone, about a second."""
    return step.ingate == "check" and not any("semantic" in line for line in step.output)


QUICK = [b for b in BLOCKS if any(quick(s) for s in b.steps)]


@pytest.mark.parametrize("block", QUICK, ids=lambda b: b.id)
def test_a_console_blocks_policy_checks_print_what_the_docs_show(block, tmp_path):
    assert replay(block, tmp_path, quick)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_a_console_blocks_commands_run_as_the_docs_show(block, tmp_path):
    """Every command of the block in order (the audit it reads is the one its generate commands wrote)."""
    assert replay(block, tmp_path, lambda step: True)


# ---- output shown without its command --------------------------------------------------------------

def test_the_policies_pages_match_and_error_examples(tmp_path):
    """docs/policies.md shows a rule's yaml and then `check --text` output for it; and an error line."""
    text = (DOCS / "policies.md").read_text()
    blocks, _ = fenced(text)
    rule = next(lines for _, info, lines in blocks if info == "yaml" and "  - id: names" in lines)
    shown = next(lines for _, info, lines in blocks if not info and lines[0].startswith("  match: rule names"))
    (tmp_path / "names.yaml").write_text("version: 1\nname: names\nrules:\n" + "\n".join(rule) + "\n")
    r = subprocess.run([INGATE, "check", "names.yaml", "--text", shown[1].strip()], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = [line.rstrip() for line in r.stdout.split("\n")]
    at = got.index(shown[0].rstrip()) if shown[0].rstrip() in got else -1
    assert at >= 0 and got[at:at + len(shown)] == [s.rstrip() for s in shown], r.stdout

    error = next(lines[0] for _, info, lines in blocks if not info and lines[0].startswith("ingate: error: bad.yaml"))
    m = re.match(r"ingate: error: bad\.yaml, rule '(\w+)', field forbid\.regex\[0\]: regex '([^']+)'", error)
    assert m, error
    (tmp_path / "bad.yaml").write_text(f"version: 1\nname: bad\nrules:\n  - id: {m.group(1)}\n"
                                       f"    forbid: {{regex: ['{m.group(2)}']}}\n    action: prevent\n")
    r = subprocess.run([INGATE, "check", "bad.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == error, r.stderr


# ---- the library examples (README and docs/library.md) run as written ------------------------------------

def _python_blocks(path: Path) -> list[str]:
    blocks, _ = fenced(path.read_text())
    return ["\n".join(lines) for _, info, lines in blocks if info == "python"]


def _run_block(code: str, capsys) -> str:
    exec(compile(code, "<docs>", "exec"), {"__name__": "docs_example"})  # noqa: S102  (the docs' own code)
    return capsys.readouterr().out


@pytest.mark.parametrize("path", [ROOT / "README.md", DOCS / "library.md"], ids=rel)
def test_the_text_stream_example_prints_what_it_says(path, capsys):
    """The first Python block of each page governs a list of deltas; its last comment is its output."""
    code = next(b for b in _python_blocks(path) if "governed(" in b)
    want = [ln[2:] for ln in code.splitlines() if ln.startswith("# ")][-1]
    assert _run_block(code, capsys).strip() == want


def test_the_logits_processor_example_masks_what_would_complete_a_ban(runtime, capsys):
    """The docs' LogitsProcessor over the embedded model's vocabulary: after a prompt and a sampled
    "The Eif", every token that would complete "Eiffel" is masked, and nothing else is."""
    import numpy as np
    import torch

    from conftest import policy

    ns: dict = {"__name__": "docs_example"}
    exec(compile(next(b for b in _python_blocks(DOCS / "library.md") if "LogitsProcessor" in b), "<docs>", "exec"),
         ns)
    ban = policy("version: 1\nname: t\nrules:\n  - id: tower\n    forbid: {phrases: [Eiffel]}\n    action: prevent\n")
    eng = runtime.engine
    prompt, sampled = eng.tokenize("Visit Paris."), eng.tokenize(" The Eif")
    proc = ns["IngateProcessor"](ban, runtime.table.token_bytes, len(prompt), eos=2)
    scores = proc(torch.tensor([prompt + sampled]), torch.zeros((1, eng.vocab_size)))
    masked = set(np.flatnonzero(torch.isinf(scores[0]).numpy()).tolist())
    completes = {t for t in range(eng.vocab_size)
                 if b"eiffel" in (b"The Eif" + runtime.table.token_bytes[t]).lower().replace(b" ", b"")}
    assert masked and masked <= completes and eng.tokenize("fel")[0] in masked
    assert all(t in masked for t in completes if runtime.table.token_bytes[t][:3].lower() == b"fel")


@pytest.mark.slow
def test_the_own_loop_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INGATE_AUDIT", str(tmp_path / "audit.sqlite3"))
    monkeypatch.chdir(ROOT)
    out = _run_block(next(b for b in _python_blocks(DOCS / "library.md") if "Runtime.load()" in b), capsys)
    assert re.search(r"\n (stop|length|content_filter) \[", out), out
    assert "eiffel" not in out.lower()
