"""Rule kinds: what a rule may say, what it becomes, and how it is checked, in one place per kind.

A kind is one object (a `RuleKind`) in one module. It declares:
  name       the rule's key in a policy file (`forbid:`, `semantic:`, `entropy:`)
  block      the pydantic model of what that key holds
  options    rule-level fields it reads besides `id` and `action` (`placeholder`, `max_retries`, ...)
  actions    the actions it takes
  validate   checks across the rule's fields, with messages that say what to fix
  spec       the validated rule as a frozen spec, its files read
  compile    the policy's rules of this kind, compiled once and shared by every stream
  checks     one stream's checks (`ingate.gate.kinds.base.Check`)
  describe   its line in `ingate check`

Kinds are registered by name as "module:attribute" strings and imported on first use, as vLLM
loads its plugins: the policy layer never imports the gate, and a new kind is one module plus one
`register_kind` call (the built-ins are listed in BUILTIN). docs/policies.md has the checklist ("A new rule kind").
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingate.policy.model import PolicyError

BUILTIN = {
    "forbid": "ingate.gate.kinds.forbid:KIND",
    "semantic": "ingate.gate.kinds.semantic:KIND",
    "entropy": "ingate.gate.kinds.entropy:KIND",
}
_REGISTRY: dict[str, str | RuleKind] = dict(BUILTIN)
_LOCK = threading.Lock()
_version = 0  # bumped by register_kind: the rule schema is rebuilt


@dataclass
class SpecContext:
    """What a kind needs to turn a validated rule into its spec: where the rule is (for errors),
    the folder its files are relative to, and the policy's content digest (files read are hashed
    into it, so a changed file is a changed policy)."""

    source: str
    data: Any  # the YAML as parsed
    index: int  # the rule's place in `rules`
    base: Path
    digest: Any  # a hashlib object
    where: Callable[[tuple], str]  # a location in the YAML -> "file, rule 'id' (rules[2]), field x.y"

    def at(self, *fields: Any) -> str:
        return self.where(("rules", self.index, *fields))

    def read_lines(self, name: str, at: tuple, what: str = "phrase") -> list[str]:
        """The non-empty, non-comment lines of a file named in the rule; hashed into the digest."""
        where = self.at(*at)
        path = (self.base / name) if not Path(name).is_absolute() else Path(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise PolicyError([f"{where}: {what}s file {str(path)!r} does not exist; "
                               "the path is relative to the policy file"]) from None
        except (OSError, UnicodeDecodeError) as e:
            raise PolicyError([f"{where}: cannot read {what}s file {str(path)!r}: {e}"]) from None
        out = [ln.strip() for ln in text.splitlines()]
        out = [ln for ln in out if ln and not ln.startswith("#")]
        if not out:
            raise PolicyError([f"{where}: {what}s file {str(path)!r} holds no {what}; write one {what} a line"])
        self.digest.update("\n".join(out).encode("utf-8"))
        return out


class RuleKind:
    """A rule kind. Subclasses set the class attributes and override what they use."""

    name: str = ""
    block: Any = None  # a pydantic model class
    about: str = ""  # what the block holds, for "a rule has exactly one of ..."
    actions: tuple[str, ...] = ()
    action_required: bool = True
    options: dict[str, tuple[Any, Any]] = {}  # field -> (annotation, pydantic default or Field)
    max_per_policy: int | None = None
    max_reason: str = ""  # why, for the error when a policy has more

    def validate(self, rule: Any) -> None:
        """Cross-field checks on a rule of this kind (its block is valid already). Raise ValueError
        with what to fix. The default checks the action and that no other kind's options are set."""
        foreign = [f for f in option_fields() if f not in self.options and getattr(rule, f, None) is not None]
        if foreign:
            owners = sorted({k.name for k in kinds() if set(foreign) & set(k.options)})
            verb, them = ("apply", "them") if len(foreign) > 1 else ("applies", "it")
            raise ValueError(f"{', '.join(foreign)} only {verb} to {' and '.join(owners)} rules; remove {them} from "
                             f"this {self.name} rule")
        if rule.action is None and self.action_required:
            raise ValueError(f"field action is missing; add it (one of {', '.join(self.actions)})")
        if rule.action is not None and rule.action not in self.actions:
            raise ValueError(f"a {self.name} rule's action is one of {', '.join(self.actions)} (got {rule.action!r})")

    def spec(self, rule: Any, ctx: SpecContext) -> Any:
        raise NotImplementedError

    def compile(self, source: str, specs: list[Any]) -> Any:
        """The policy's rules of this kind, compiled (raise PolicyError naming rule and field)."""
        return specs

    def checks(self, part: Any, options: Any) -> list[Any]:
        """One stream's checks of this kind, from its compiled part."""
        return []

    def describe(self, spec: Any) -> str:
        return f"{spec.kind} rule"


def register_kind(name: str, target: str | RuleKind) -> None:
    """Make a rule kind available to policies: `target` is the kind or "module:attribute"."""
    global _version
    if not name or not name.isidentifier():
        raise ValueError(f"rule kind name {name!r}: an identifier, the rule's key in a policy")
    with _LOCK:
        _REGISTRY[name] = target
        _version += 1


def kind(name: str) -> RuleKind:
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        resolved = getattr(importlib.import_module(module), attr)
        if not isinstance(resolved, RuleKind) or resolved.name != name:
            raise TypeError(f"rule kind {name!r}: {target} is not a RuleKind named {name!r}")
        with _LOCK:
            _REGISTRY[name] = target = resolved
    return target


def kinds() -> list[RuleKind]:
    """Every registered kind, built-ins first, in registration order."""
    return [kind(n) for n in list(_REGISTRY)]


def version() -> int:
    return _version


def option_fields() -> dict[str, tuple[Any, Any]]:
    """Every kind's rule-level fields (a field two kinds declare must mean the same in both)."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in kinds():
        out.update(k.options)
    return out
