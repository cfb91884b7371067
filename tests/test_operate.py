"""The conventions a service is run by: `--version`, `python -m ingate`, `py.typed` shipped, an
$INGATE_* variable for every `serve` option (made from the parser, the flag winning), and the
documented exit statuses."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from importlib import resources

import pytest

from conftest import INGATE, ROOT
from ingate import __version__
from ingate.cli import env
from ingate.cli.parser import build_parser, subparser

SERVE = subparser(build_parser(), "serve")
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("INGATE_")}


def _parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    args, _ = build_parser().parse_known_args(["serve", *argv])
    env.apply(SERVE, args, argv, environ)
    return args


def _sample(action: argparse.Action) -> tuple[str, object]:
    """A value for an option's variable that differs from its default, and what it parses to."""
    if action.nargs == 0:
        return "true", not action.default
    if action.choices is not None:
        pick = next(c for c in reversed(list(action.choices)) if c != action.default)
        return str(pick), pick
    if isinstance(action, argparse._AppendAction):
        return "one, two", ["one", "two"]
    if callable(action.type):
        return "7", action.type("7")
    return "some-value", "some-value"


def test_every_serve_option_has_a_variable_made_from_its_flag():
    names = [var for var, _ in env.options(SERVE)]
    assert len(names) == len(set(names)) and len(names) >= 30
    # the names the docs used before there was a rule, kept by the rule
    assert {"INGATE_API_KEYS", "INGATE_ADMIN_KEYS", "INGATE_KEYS", "INGATE_SESSIONS", "INGATE_AUDIT",
            "INGATE_AUDIT_KEY_FILE", "INGATE_VLLM_PYTHON", "INGATE_POLICIES", "INGATE_LOG_LEVEL"} <= set(names)
    page = (ROOT / "docs" / "cli.md").read_text()
    missing = [n for n in names if not re.search(rf"`{n}`", page)]
    assert not missing, f"docs/cli.md does not list {missing}"
    for var, action in env.options(SERVE):
        raw, want = _sample(action)
        assert getattr(_parse([], {var: raw}), action.dest) == want, var


def test_a_flag_wins_over_its_variable_and_an_empty_variable_is_unset():
    environ = {"INGATE_PORT": "9001", "INGATE_POLICIES": "a,b", "INGATE_CONSOLE": "yes", "INGATE_HOST": ""}
    args = _parse(["--port", "9002", "--policy=c"], environ)
    assert (args.port, args.policy, args.console, args.host) == (9002, ["c"], True, "127.0.0.1")
    assert _parse([], environ).policy == ["a", "b"]


@pytest.mark.parametrize("environ, message", [
    ({"INGATE_PORT": "eighty"}, "$INGATE_PORT='eighty': 'eighty' is not a whole number"),
    ({"INGATE_LOG_FORMAT": "xml"}, "$INGATE_LOG_FORMAT='xml': choose from text, json"),
    ({"INGATE_CONSOLE": "maybe"}, "$INGATE_CONSOLE='maybe': write one of"),
])
def test_a_bad_variable_is_a_usage_error_that_names_it(environ, message):
    r = subprocess.run([INGATE, "serve"], env=CLEAN | environ, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_version_and_python_dash_m_are_the_same_command():
    a = subprocess.run([INGATE, "--version"], capture_output=True, text=True, timeout=120)
    b = subprocess.run([sys.executable, "-m", "ingate", "--version"], capture_output=True, text=True, timeout=120)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout == f"ingate {__version__}\n"
    c = subprocess.run([sys.executable, "-m", "ingate", "serve", "--port", "0x"], capture_output=True, text=True,
                       timeout=120)
    assert c.returncode == 2 and c.stderr.startswith("ingate: error: argument --port")


def test_py_typed_is_in_the_package_and_its_data():
    assert resources.files("ingate").joinpath("py.typed").is_file()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ingate"]
    assert "py.typed" in data


def test_the_exit_statuses_are_documented_as_the_cli_uses_them():
    import ingate.cli

    page = (ROOT / "docs" / "cli.md").read_text().split("## Exit status", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| (\d+) \|", page, re.M))
    in_code = set(re.findall(r"^  (\d+)  ", ingate.cli.__doc__ or "", re.M))
    assert documented == in_code == {"0", "1", "2", "130"}
