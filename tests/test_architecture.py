"""The shape of the code, kept: no import cycle in src/, no module over 450 lines, no function over
80, and a rule kind is one module plus one registration (a toy kind, `tests/toykind.py`, proves it).

Imports are read from the source (every `import` statement, at module level or inside a function,
except those under `if TYPE_CHECKING:`, which never run). Kinds and encoders are registered as
"module:attribute" strings and imported on first use, as vLLM loads its plugins: those are not
import statements, and they are how the policy layer stays below the gate.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import policy

SRC = Path(__file__).resolve().parent.parent / "src"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted((SRC / "ingate").rglob("*.py")):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for n in node.body:
                lines.update(range(n.lineno, (n.end_lineno or n.lineno) + 1))
    return lines


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ingate modules `name` imports (a package's __init__ counts as the package)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[:len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("ingate"):
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    g = {m: _imports(m, p, known) for m, p in mods.items()}
    # importing `a.b.c` runs a/__init__ and a/b/__init__ first: a package is imported with its modules,
    # so an arrow to a module inside a package is not an arrow to the package (that is what cycles need)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_src_has_no_import_cycle():
    g = _graph()
    # a package's __init__ that re-exports its own modules is not a cycle with them
    for m in g:
        g[m] = {t for t in g[m] if not (m.startswith(t + ".") and _modules()[t].name == "__init__.py")}
    cycles = _cycles(g)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_function_is_over_80_lines():
    long = []
    for p in _modules().values():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


# ---- a new rule kind is one module and one registration -----------------------------------------------
@pytest.fixture
def toy_kind():
    from ingate.policy import kinds as registry

    before = dict(registry._REGISTRY)
    registry.register_kind("max_words", "toykind:KIND")
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    registry.register_kind("forbid", before["forbid"])  # bump the schema version back


TOY = """
version: 1
name: toy
rules:
  - id: short
    max_words: {limit: 5}
    action: stop
    message: "(that is enough)"
"""


def test_a_toy_kind_validates_compiles_and_governs_from_its_one_module(toy_kind):
    from ingate import GateOptions, Mode, Verdict, compile_policy
    from ingate.gate.explain import policy_report
    from ingate.gate.gate import Gate
    from ingate.policy import PolicyError

    pol = policy(TOY)
    assert pol.rules[0].kind == "max_words" and pol.rules[0].limit == 5
    assert "  - short: stop after 5 words" in policy_report(compile_policy(pol))
    with pytest.raises(PolicyError, match=r"rule 'short' \(rules\[0\]\), field max_words.limit"):
        policy(TOY.replace("limit: 5", "limit: 0"))
    with pytest.raises(PolicyError, match="message only applies to entropy and max_words rules"):
        policy(TOY.replace("max_words: {limit: 5}", "forbid: {phrases: [x]}"))
    with pytest.raises(PolicyError, match="exactly one of forbid: .*max_words: \\(a word limit\\)"):
        policy(TOY.replace("    action: stop", "    forbid: {phrases: [x]}\n    action: stop"))
    gate = Gate(compile_policy(pol), None, GateOptions(), mode=Mode.TEXT)
    out, verdict = "", Verdict.ADMIT
    for delta in ["One two ", "three four ", "five six ", "seven eight"]:
        verdict = gate.feed(delta).verdict
        out += gate.release()
        if verdict is not Verdict.ADMIT:
            break
    out += gate.release()
    assert verdict is Verdict.STOP and out.split()[:5] == ["One", "two", "three", "four", "five"]
    assert "six" not in out and out.endswith("(that is enough)")
    assert [d.rule_id for d in gate.decisions] == ["short"]


def test_without_its_registration_the_toy_kind_is_an_unknown_field():
    from ingate.policy import PolicyError

    with pytest.raises(PolicyError, match="field max_words: unknown field"):
        policy(TOY)
