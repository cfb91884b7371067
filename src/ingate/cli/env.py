"""`INGATE_*` environment variables for a subcommand's options, derived from its argparse definitions.

Every option `--some-flag` of `ingate serve` can be set as `$INGATE_SOME_FLAG`, so a supervisor or a
container image configures the server without a command line. The names are made from the parser,
never listed by hand: a new flag has its variable the day it is added.

- a repeatable option (`action="append"`, e.g. `--policy`, `--api-key`) is named in the plural
  (`$INGATE_POLICIES`, `$INGATE_API_KEYS`) and holds a comma-separated list;
- a switch (`--console`) takes 1/true/yes/on or 0/false/no/off;
- a flag on the command line wins: the variable is read only for an option the command line does
  not give. A value is checked as the flag's would be, and a bad one is a usage error (exit 2)
  that names the variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping, Sequence

PREFIX = "INGATE_"
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _plural(name: str) -> str:
    """POLICY -> POLICIES, KEY -> KEYS."""
    return name[:-1] + "IES" if name.endswith("Y") and name[-2:-1] not in "AEIOU" else name + "S"


def env_name(action: argparse.Action) -> str:
    """The variable for one option: its long flag, upper-cased, '-' as '_', plural when repeatable."""
    flag = max(action.option_strings, key=len).lstrip("-")
    name = PREFIX + flag.upper().replace("-", "_")
    return _plural(name) if isinstance(action, argparse._AppendAction) else name


def options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """(variable, action) for each option of `parser` that takes a setting (not --help)."""
    for action in parser._actions:
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield env_name(action), action


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    """Does the command line give this option (`--flag VALUE` or `--flag=VALUE`)?"""
    for tok in argv:
        if tok == "--":
            return False
        if any(tok == o or tok.startswith(o + "=") for o in action.option_strings if o.startswith("--")):
            return True
    return False


def _convert(parser: argparse.ArgumentParser, var: str, action: argparse.Action, raw: str) -> object:
    if action.nargs == 0:  # a switch (store_true / store_false)
        low = raw.strip().lower()
        if low not in TRUE + FALSE:
            parser.error(f"${var}={raw!r}: write one of {', '.join(TRUE)} or {', '.join(FALSE)}")
        on = low in TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    values = [v.strip() for v in raw.split(",") if v.strip()] if isinstance(action, argparse._AppendAction) \
        else [raw]
    out = []
    for v in values:
        try:
            x = action.type(v) if callable(action.type) else v
        except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
            parser.error(f"${var}={v!r}: {e}")
        if action.choices is not None and x not in action.choices:
            parser.error(f"${var}={v!r}: choose from {', '.join(map(str, action.choices))}")
        out.append(x)
    return out if isinstance(action, argparse._AppendAction) else out[0]


def apply(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str],
          environ: Mapping[str, str]) -> None:
    """Set on `args` each option of `parser` that `argv` does not give and `environ` does (an empty
    variable counts as unset)."""
    for var, action in options(parser):
        raw = environ.get(var)
        if raw is None or not raw.strip() or _given(action, argv):
            continue
        setattr(args, action.dest, _convert(parser, var, action, raw))
