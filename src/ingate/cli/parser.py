"""The command line's grammar: one function per subcommand. Usage errors are one line that says
what to fix (exit 2)."""

from __future__ import annotations

import argparse

from ingate import __version__
from ingate.logs import FORMATS as LOG_FORMATS
from ingate.logs import LEVELS as LOG_LEVELS

MODEL_HELP = "the engine: llama.cpp:PATH or a path to a GGUF model (default: embedded SmolLM2-135M)"


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _nonnegative_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _float_in(lo: float, hi: float):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
        if not (lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v
    return parse


def _gen_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default=None, help="policy YAML; 'none' for ungoverned (default: built-in)")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--max-tokens", type=_positive_int, default=256)
    p.add_argument("--temperature", type=_float_in(0.0, 2.0), default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-p", type=_float_in(1e-6, 1.0), default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--audit", default=None, help="audit SQLite path or postgresql:// URL (default: $INGATE_AUDIT "
                                                 "or ~/.local/state/ingate/audit.sqlite3)")
    _key_flag(p)


def _key_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audit-key-file", default=None,
                   help="the audit's HMAC key (default: $INGATE_AUDIT_KEY, $INGATE_AUDIT_KEY_FILE, or AUDIT.key "
                        "beside the audit file, made at first start)")


class _Parser(argparse.ArgumentParser):
    """One line on a usage error, not a usage dump: the line says what to fix."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"ingate: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="ingate", description="Governed LLM generation: an admissibility "
                                 "gate inside the token loop.")
    ap.add_argument("--version", action="version", version=f"ingate {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for add in (_generate, _chat, _serve, _check, _audit, _doctor, _calibrate):
        add(sub)
    return ap


def subparser(ap: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand of `ap` (build_parser's)."""
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _generate(sub) -> None:
    """ingate generate PROMPT: one governed generation."""
    g = sub.add_parser("generate", help="generate governed text for one prompt")
    g.add_argument("prompt")
    _gen_flags(g)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    g.add_argument("--schema", metavar="FILE", default=None,
                   help="a JSON Schema file (or 'object' for any JSON object) the output must follow, as "
                        "response_format does on the server; the policy governs inside it")
    g.add_argument("--show-entropy", action="store_true",
                   help="colour the output by each token's entropy (where the model was unsure)")


def _chat(sub) -> None:
    """ingate chat: the same loop as a REPL."""
    c = sub.add_parser("chat", help="interactive governed chat")
    _gen_flags(c)


def _serve(sub) -> None:
    """ingate serve: the OpenAI-compatible governed API."""
    # no abbreviations: with --engine vllm, a flag ingate does not know must reach vLLM whole
    s = sub.add_parser("serve", help="serve the OpenAI-compatible governed API", allow_abbrev=False)
    s.add_argument("--policy", action="append", default=None,
                   help="policy YAML, 'default' or 'none'; repeat to load several (the first is the default)")
    s.add_argument("--model", default=None, help=MODEL_HELP)
    s.add_argument("--models", default=None, metavar="FILE",
                   help="a models file (YAML): each model name -> a local GGUF or an OpenAI-compatible upstream "
                        "(docs/upstreams.md)")
    s.add_argument("--engine", choices=["llamacpp", "vllm"], default="llamacpp",
                   help="llamacpp: ingate's own loop (default). vllm: vLLM with ingate's logits processor, started "
                        "by ingate behind its API; --model is then a directory of Hugging Face weights (or "
                        "'embedded'), and flags ingate does not know (--tensor-parallel-size N, ...) go to vLLM")
    s.add_argument("--vllm-python", default=None, metavar="PYTHON",
                   help="--engine vllm: a Python with vLLM and ingate (default: $INGATE_VLLM_PYTHON, or this one)")
    s.add_argument("--upstream", default=None, metavar="URL",
                   help="govern this OpenAI-compatible API instead of a local model (its root, e.g. "
                        "http://127.0.0.1:8080/v1)")
    s.add_argument("--upstream-model", default=None, metavar="NAME",
                   help="the upstream's model name (default: what /v1/models there lists first)")
    s.add_argument("--upstream-key-env", default=None, metavar="VAR",
                   help="the environment variable holding the upstream's API key")
    s.add_argument("--upstream-kind", default="generic",
                   help="openai, fireworks, vllm, llama.cpp, ollama or generic: what the upstream can take "
                        "before sampling (default: generic, hold-back only)")
    s.add_argument("--upstream-capabilities", default=None, metavar="LIST",
                   help="comma-separated capabilities replacing the kind's preset; '+name' adds one to it "
                        "(e.g. +ingate_mask: the vLLM upstream runs ingate's logits processor)")
    s.add_argument("--upstream-tokenizer", default=None, metavar="GGUF",
                   help="the upstream model's vocabulary ('embedded' or a GGUF path): exact logit_bias")
    _serve_ops(s)


def _serve_ops(s) -> None:
    """serve's operational flags: where it listens, keys, limits, sessions, the audit, the logs. Each
    is also an $INGATE_* variable (ingate.cli.env)."""
    s.add_argument("--parallel", type=_positive_int, default=None, metavar="N",
                   help="local engines: generations run at once, batched in one decode per step (default 8; "
                        "docs/serving.md says how to choose)")
    s.add_argument("--prefix-cache-mb", type=_nonnegative_int, default=None, metavar="MB",
                   help="local engines: memory for the KV of recent prompts, so a shared prefix (a system prompt) "
                        "is evaluated once (default 256; 0: off)")
    s.add_argument("--step-tokens", type=_positive_int, default=None, metavar="N",
                   help="local engines: tokens one step decodes at most; prompts are evaluated in chunks within "
                        "it, so a long one never stalls the others' streams by more (default 128)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_positive_int, default=8000)
    s.add_argument("--api-key", action="append", default=None,
                   help="require this bearer key; KEY:POLICY+POLICY restricts it to those policies, "
                        "KEY:POLICIES:full (or KEY::full, every policy) shows it full governance detail "
                        "(also $INGATE_API_KEYS, comma-separated); its sessions are its own")
    s.add_argument("--keys", default=None, metavar="FILE",
                   help="API keys in a YAML file: each with an id (named in the audit), its secret, a tenant whose "
                        "sessions it shares, policies and detail (docs/server.md, 'Keys and tenants'; also "
                        "$INGATE_KEYS)")
    s.add_argument("--max-queue", type=_positive_int, default=16, help="requests waiting before 429")
    s.add_argument("--max-queue-wait", type=_positive_int, default=120, metavar="S",
                   help="seconds a request may wait for a place before it is turned away with a 429 (default 120)")
    s.add_argument("--max-tokens-cap", type=_positive_int, default=2048)
    s.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000)
    s.add_argument("--session-ttl", type=_positive_int, default=3600, help="seconds a session outlives its last use")
    s.add_argument("--sessions", default=None, metavar="URL",
                   help="where sessions live: 'memory' (this process, the default) or redis://HOST:PORT/DB, shared by "
                        "every replica that names it (also $INGATE_SESSIONS)")
    s.add_argument("--drain-seconds", type=_positive_int, default=30,
                   help="on SIGTERM: stop accepting, let streams in flight finish this long, then cancel them "
                        "(each audited)")
    s.add_argument("--vault-key-file", default=None, metavar="FILE",
                   help="the key session vaults are encrypted with in Redis (mask_upstream with vault: session; also "
                        "$INGATE_VAULT_KEY or $INGATE_VAULT_KEY_FILE; the same on every replica)")
    s.add_argument("--sessions-prefix", default="ingate",
                   help="the Redis key prefix: one per deployment sharing a Redis (default: ingate)")
    s.add_argument("--governance-detail", choices=("minimal", "full"), default="minimal",
                   help="what clients see of governance: minimal (rule, action, position, a generic sentence) or "
                        "full (also the internal detail and, with store_text, the matched text); an API key "
                        "written KEY:POLICIES:full overrides it for that key")
    s.add_argument("--audit", default=None, help="audit SQLite path or postgresql:// URL, shared by replicas "
                   "(default: $INGATE_AUDIT or ~/.local/state/ingate/audit.sqlite3)")
    _key_flag(s)
    s.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                   help="ingate's and uvicorn's log level (default info: an access line per request); other "
                        "libraries log warnings and above")
    s.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (TIME LEVEL LOGGER: message key=value ...) or json (one object per line), on stderr")
    s.add_argument("--console", action="store_true",
                   help="also serve the console at /console: a playground, live decisions, performance and a policy "
                        "lab in the browser (docs/console.md); guarded by an admin key whenever keys are configured")
    s.add_argument("--admin-key", action="append", default=None, metavar="KEY",
                   help="a key that opens the console (repeatable; also $INGATE_ADMIN_KEYS, comma-separated; or "
                        "admin: true on a keys-file entry); needed with --console when API keys are configured")


def _check(sub) -> None:
    """ingate check POLICY: validate a policy, and with --text show what it matches."""
    k = sub.add_parser("check", help="validate a policy and print a summary")
    k.add_argument("policy")
    k.add_argument("--text", default=None, help="also report what the policy would match in TEXT")


def _audit(sub) -> None:
    """ingate audit tail|export|find|scrub: read the audit trail."""
    a = sub.add_parser("audit", help="read the audit trail")
    asub = a.add_subparsers(dest="audit_cmd", required=True, parser_class=_Parser)
    t = asub.add_parser("tail", help="print recent decisions")
    t.add_argument("-n", type=_positive_int, default=20)
    t.add_argument("--audit", default=None)
    t.add_argument("--json", action="store_true")
    x = asub.add_parser("export", help="print requests and decisions since a time, as JSON lines")
    x.add_argument("--since", default="0", help="ISO 8601 time (2026-11-26T08:00) or Unix seconds")
    x.add_argument("--audit", default=None)
    f = asub.add_parser("find", help="decisions that withheld exactly TEXT (looked up by its keyed digest)")
    f.add_argument("text")
    f.add_argument("--audit", default=None)
    f.add_argument("--json", action="store_true")
    _key_flag(f)
    sc = asub.add_parser("scrub", help="blank the plain SHA-256 digests written before the audit was keyed")
    sc.add_argument("--audit", default=None)


def _doctor(sub) -> None:
    """ingate doctor: check the setup."""
    d = sub.add_parser("doctor", help="check the setup and print what a bug report needs")
    d.add_argument("--model", default=None, help=MODEL_HELP)
    d.add_argument("--audit", default=None, help="audit SQLite path to check (default: $INGATE_AUDIT or "
                                                 "~/.local/state/ingate/audit.sqlite3)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    _key_flag(d)


def _calibrate(sub) -> None:
    """ingate calibrate POLICY --labelled FILE: measure a semantic rule's threshold."""
    cal = sub.add_parser("calibrate", help="measure a semantic rule's threshold on labelled texts")
    cal.add_argument("policy", help="policy YAML with at least one semantic rule")
    cal.add_argument("--labelled", required=True,
                     help="CSV (header row) or JSONL: a text (or prompt) column and admissible (true/false) "
                          "or label (safe/unsafe)")
    cal.add_argument("--rule", default=None, help="the semantic rule to calibrate (needed when there are several)")
    cal.add_argument("--max-false-block", type=_float_in(0.0, 1.0), default=0.05,
                     help="highest share of admissible texts the suggested threshold may block (default 0.05)")
    cal.add_argument("--png", default=None, help="where to write the ROC curve (default: calibrate-RULE.png)")
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    cal.add_argument("--drop-overlap", action="store_true",
                     help="for a rule with a trained head: leave out labelled texts that repeat its training data "
                          "(by default such a file is refused: it is not held out)")
