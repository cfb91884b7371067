"""ingate generate | chat | serve | check | audit | calibrate | doctor.

Every user error (a bad policy, a missing model, a bad flag value) is one line on stderr that
says what to fix, and a non-zero exit status (docs/cli.md, "Exit status"):
  0  success
  1  something could not run (a model that will not load, an audit that cannot open, an engine crash,
     an optional part not installed: the line names the pip command)
  2  invalid usage or input (a bad flag or $INGATE_* value, an invalid policy or keys file, a bad schema)
  130  interrupted (Ctrl-C)
serve, stopped by SIGTERM or Ctrl-C, drains and then ends by that signal (as uvicorn does).
"""

from __future__ import annotations

import os
import sys

from ingate.cli import env
from ingate.cli.common import UserError
from ingate.cli.parser import build_parser, subparser
from ingate.extras import MissingExtra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if args.cmd == "serve":  # $INGATE_* for each option the command line does not give (ingate.cli.env)
        env.apply(subparser(parser, "serve"), args, argv, os.environ)
    if extra and not (args.cmd == "serve" and args.engine == "vllm"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.engine_args = extra  # serve --engine vllm: what vLLM takes
    try:
        return _handler(args.cmd)(args)
    except UserError as e:
        print(f"ingate: error: {e}", file=sys.stderr)
        return e.code
    except MissingExtra as e:  # an optional part this command needs is not installed
        print(f"ingate: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _handler(cmd: str):
    """The subcommand's function, imported only when it runs (serve needs the server, calibrate the encoder)."""
    if cmd in ("generate", "chat"):
        from ingate.cli import run

        return {"generate": run.cmd_generate, "chat": run.cmd_chat}[cmd]
    if cmd in ("check", "calibrate"):
        from ingate.cli import policies

        return {"check": policies.cmd_check, "calibrate": policies.cmd_calibrate}[cmd]
    if cmd == "serve":
        from ingate.cli.serve import cmd_serve

        return cmd_serve
    from ingate.cli import ops

    return {"audit": ops.cmd_audit, "doctor": ops.cmd_doctor}[cmd]


if __name__ == "__main__":
    sys.exit(main())
