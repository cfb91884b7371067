"""ingate audit and ingate doctor: reading the audit trail, and checking the setup."""

from __future__ import annotations

import argparse
import json

from ingate.cli.common import UserError


def cmd_audit(args: argparse.Namespace) -> int:
    from ingate.store.audit import AuditError, describe, open_audit

    try:
        log = open_audit(args.audit, getattr(args, "audit_key_file", None), write=args.audit_cmd == "find")
    except AuditError as e:
        raise UserError(str(e)) from None
    if args.audit_cmd == "scrub":
        print(f"blanked {log.scrub_unkeyed()} plain SHA-256 digest(s) in {log.path}")
        return 0
    rows = {"export": lambda: log.export(_since(args.since)), "find": lambda: log.find(args.text),
            "tail": lambda: log.tail(args.n)}[args.audit_cmd]()
    if args.audit_cmd == "export" or args.json:  # JSON lines
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no decisions withheld that text in {log.path}" if args.audit_cmd == "find"
              else f"no decisions recorded in {log.path}")
    for r in rows:
        print(describe(r))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ingate import doctor

    checks, facts = doctor.run(args.model, args.audit, args.audit_key_file)
    if args.json:
        print(json.dumps({"ok": all(c.ok for c in checks), "checks": [c.to_dict() for c in checks], "facts": facts},
                         ensure_ascii=False, default=str))
    else:
        print(doctor.render(checks, facts))
    return 0 if all(c.ok for c in checks) else 1


def _since(text: str) -> float:
    import datetime as _dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"--since {text!r} is neither Unix seconds nor an ISO 8601 time (2026-11-26T08:00)",
                        code=2) from None
    return t.timestamp()  # a time without an offset is local time
