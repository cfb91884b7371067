"""Policy files: YAML in, a validated `Policy` out, with errors that name the file, the rule and
the field, and say what to fix.

A file is checked against the schema (`ingate.policy.schema`, built from the registered rule
kinds) and each rule becomes its kind's spec, with the files it names read and hashed into the
policy's digest. A policy is validated and compiled once; compiled policies are cached by that
digest (the YAML plus every file it reads), so two requests naming the same policy share one set
of automata and mask caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ingate.policy.kinds import SpecContext
from ingate.policy.model import NONE_POLICY, MaskSpec, Policy, PolicyError
from ingate.policy.schema import MaskUpstream, actions, policy_model


def where(source: str, data: Any, loc: tuple[Any, ...]) -> str:
    """Turn a pydantic location into 'file: rule 'id' (rules[2]), field forbid.regex[0]'."""
    parts = [str(source)]
    rest = list(loc)
    if len(rest) >= 2 and rest[0] == "rules" and isinstance(rest[1], int):
        idx = rest[1]
        rid = None
        if isinstance(data, dict) and isinstance(data.get("rules"), list) and idx < len(data["rules"]):
            r = data["rules"][idx]
            rid = r.get("id") if isinstance(r, dict) else None
        parts.append(f"rule {rid!r} (rules[{idx}])" if rid else f"rules[{idx}] (no id)")
        rest = rest[2:]
    fld = ""
    for p in rest:
        fld += f"[{p}]" if isinstance(p, int) else (("." if fld else "") + str(p))
    if fld:
        parts.append(f"field {fld}")
    return ", ".join(parts)


def _fix_for(err: Mapping[str, Any]) -> str:
    t = err["type"]
    msg = err["msg"]
    if t == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if t == "missing":
        return "missing; add it"
    if t == "literal_error" and err["loc"][-1:] == ("action",):
        return f"must be one of {', '.join(actions())}"
    if t == "literal_error" and err["loc"][-1:] == ("fallback",):
        return "must be stop (end the stream with content_filter once the retries are spent)"
    if t == "literal_error" and "apply_to" in err["loc"]:
        return "each entry is output (check generated groups) or input (check the prompt before generating)"
    if t == "finite_number":
        return "must be a finite number"
    if t == "literal_error" and err["loc"] == ("version",):
        return "must be 1 (write `version: 1` at the top)"
    if msg.startswith("Value error, "):
        return msg[len("Value error, "):]
    return msg[0].lower() + msg[1:]


def _yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError([f"{source}: not valid YAML{at}: {problem}"]) from None
    if not isinstance(data, dict):
        raise PolicyError([f"{source}: a policy is a YAML mapping with version, name and rules; "
                           f"found {type(data).__name__}"])
    return data


def parse_policy(text: str, source: str = "<string>", base: Path | None = None) -> Policy:
    """Validate a policy's YAML text. Files it names are read relative to `base`."""
    data = _yaml(text, source)
    try:
        model: Any = policy_model().model_validate(data)
    except ValidationError as e:
        raise PolicyError([f"{where(source, data, tuple(err['loc']))}: {_fix_for(err)}"
                           for err in e.errors()]) from None
    base = base or Path.cwd()
    digest = hashlib.sha256(text.encode("utf-8"))
    rules: list[Any] = []
    problems: list[str] = []
    for i, r in enumerate(model.rules):
        ctx = SpecContext(source, data, i, base, digest, lambda loc: where(source, data, loc))
        try:
            rules.append(r.kind.spec(r, ctx))
        except PolicyError as e:
            problems.extend(e.problems)
    if problems:
        raise PolicyError(problems)
    ses = model.session
    return Policy(name=model.name, source=source, rules=tuple(rules), store_text=model.audit.store_text,
                  max_rollbacks=model.max_rollbacks, digest=digest.hexdigest(),
                  escalate_after=ses.escalate_after if ses else None, refusal=ses.refusal if ses else "",
                  on_store_error=ses.on_store_error if ses else "refuse", mask=_mask(model.mask_upstream))


def _mask(m: MaskUpstream | list[str] | None) -> MaskSpec | None:
    if m is None:
        return None
    if isinstance(m, list):
        return MaskSpec(tuple(dict.fromkeys(m)))
    return MaskSpec(tuple(dict.fromkeys(m.values)), m.answer, m.vault)


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file; `None` or "default" gives the shipped default, "none" means ungoverned."""
    if path is None or str(path) == "default":
        text = resources.files("ingate.policies").joinpath("default.yaml").read_text(encoding="utf-8")
        base = Path(str(resources.files("ingate.policies")))
        return parse_policy(text, source="<builtin:default>", base=base)
    if str(path) == "none":
        return NONE_POLICY
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError([f"{p}: policy file does not exist; pass a YAML policy, 'default' or 'none'"]) from None
    except IsADirectoryError:
        raise PolicyError([f"{p}: is a directory; pass a YAML policy file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError([f"{p}: cannot read policy: {e}"]) from None
    return parse_policy(text, source=str(p), base=p.parent)
