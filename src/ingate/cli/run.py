"""ingate generate and ingate chat: governed generation on the command line, through a core."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ingate import report
from ingate.cli.common import UserError, load
from ingate.compose import ComposeError, open_core
from ingate.core import Core, Request
from ingate.drivers.base import GenerationFailed, GenerationParams
from ingate.policy import Policy
from ingate.sampling import SamplingParams


def _params(args: argparse.Namespace):
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}", code=2)
    return GenerationParams(max_tokens=args.max_tokens,
                            sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                                    top_k=args.top_k, seed=args.seed))


def _core(args: argparse.Namespace, policies: list[Policy]) -> Core:
    """The engine core (its own process unless INGATE_ENGINE_PROCESS=0), policies compiled and warm."""
    try:
        return open_core(args.model, args.audit, policies, audit_key_file=args.audit_key_file)
    except ComposeError as e:
        raise UserError(str(e), e.code) from None


def _messages(system: str | None, history: list[dict[str, str]], prompt: str) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + history + [{"role": "user", "content": prompt}]


def _schema(path: str | None):
    """The structure `--schema` names: a JSON Schema file, or `object` (any JSON object)."""
    from ingate.structure import StructureError, from_response_format

    if path is None:
        return None
    if path == "object":
        return from_response_format({"type": "json_object"})
    try:
        schema = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"--schema {path}: cannot read it ({e.strerror})", code=2) from None
    except ValueError as e:
        raise UserError(f"--schema {path}: not JSON ({e})", code=2) from None
    try:
        name = Path(path).stem[:64] or "schema"
        return from_response_format({"type": "json_schema", "json_schema": {"name": name, "schema": schema}})
    except StructureError as e:
        raise UserError(f"--schema {path}: {e}", code=2) from None


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise UserError("empty prompt: give the text to generate from", code=2)
    policy = load(args.policy)
    params = dataclasses.replace(_params(args), entropy=args.json or args.show_entropy)
    structure = _schema(args.schema)
    core = _core(args, [policy])
    out = None if args.json or args.show_entropy else _stream_out
    try:
        res = core.run(Request(_messages(args.system, [], args.prompt), policy, params, structure=structure),
                       on_text=out)
    except GenerationFailed as e:  # audited; what was released stays on stdout
        if out is not None:
            sys.stdout.write("\n")
        raise UserError(str(e.cause)) from None
    finally:
        core.close()
    if args.json:  # the operator's own command line: the full report
        print(json.dumps(report.result_json(res, policy.store_text), ensure_ascii=False))
        return 0
    if args.show_entropy:
        sys.stdout.write(report.entropy_text(res, plain=bool(os.environ.get("NO_COLOR"))))
    sys.stdout.write("\n")
    sys.stdout.flush()  # the summary goes to stderr: keep it after the text when both are piped
    if args.show_entropy:
        print(report.ENTROPY_LEGEND, file=sys.stderr)
    if res.decisions or res.finish_reason == "content_filter":
        print(report.summary(res), file=sys.stderr)
    return 0


def _stream_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_chat(args: argparse.Namespace) -> int:
    policy = load(args.policy)
    params = _params(args)
    core = _core(args, [policy])
    history: list[dict[str, str]] = []
    print(f"ingate chat: model {core.name}, policy {policy.name}. Empty line or Ctrl-D to quit.",
          file=sys.stderr)
    try:
        return _chat_loop(args, core, policy, params, history)
    finally:
        core.close()


def _chat_loop(args: argparse.Namespace, core, policy: Policy, params, history: list[dict[str, str]]) -> int:
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return 0
        if not line.strip():
            return 0
        try:
            res = core.run(Request(_messages(args.system, history, line), policy, params), on_text=_stream_out)
        except GenerationFailed as e:
            print(f"\ningate: {e.cause}", file=sys.stderr)
            history.clear()
            if core.ensure_alive():
                print("ingate: started a new engine process; the conversation starts over", file=sys.stderr)
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()  # the summary goes to stderr: keep it after the text when both are piped
        if res.decisions or res.finish_reason == "content_filter":
            print(report.summary(res), file=sys.stderr)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": res.text}]
