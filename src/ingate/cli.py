"""ingate generate | chat | serve | check | audit | calibrate | doctor.

Every user error (a bad policy, a missing model, a bad flag value) is one line on stderr that
says what to fix, and a non-zero exit: 2 for an invalid policy or usage, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from ingate import report
from ingate.core import Request
from ingate.engines.base import EngineError
from ingate.loop import GenerationFailed
from ingate.policy import Policy, PolicyError, SemanticRuleSpec, load_policy
from ingate.sampling import SamplingParams


class UserError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


VLLM_CONCURRENCY = 64  # --engine vllm: streams in flight to vLLM (it batches them)
MODEL_HELP = "the engine: llama.cpp:PATH or a path to a GGUF model (default: embedded SmolLM2-135M)"


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
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
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="generate governed text for one prompt")
    g.add_argument("prompt")
    _gen_flags(g)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    g.add_argument("--schema", metavar="FILE", default=None,
                   help="a JSON Schema file (or 'object' for any JSON object) the output must follow, as "
                        "response_format does on the server; the policy governs inside it")
    g.add_argument("--show-entropy", action="store_true",
                   help="colour the output by each token's entropy (where the model was unsure)")
    c = sub.add_parser("chat", help="interactive governed chat")
    _gen_flags(c)
    # no abbreviations: with --engine vllm, a flag ingate does not know must reach vLLM whole
    s = sub.add_parser("serve", help="serve the OpenAI-compatible governed API", allow_abbrev=False)
    s.add_argument("--policy", action="append", default=None,
                   help="policy YAML, 'default' or 'none'; repeat to load several (the first is the default)")
    s.add_argument("--model", default=None, help=MODEL_HELP)
    s.add_argument("--models", default=None, metavar="FILE",
                   help="a models file (YAML): each model name -> a local GGUF or an OpenAI-compatible upstream "
                        "(README \"Upstreams\")")
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
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=_positive_int, default=8000)
    s.add_argument("--api-key", action="append", default=None,
                   help="require this bearer key; KEY:POLICY+POLICY restricts it to those policies, "
                        "KEY:POLICIES:full (or KEY::full, every policy) shows it full governance detail "
                        "(also $INGATE_API_KEYS, comma-separated); its sessions are its own")
    s.add_argument("--keys", default=None, metavar="FILE",
                   help="API keys in a YAML file: each with an id (named in the audit), its secret, a tenant whose "
                        "sessions it shares, policies and detail (README 'Keys and tenants'; also $INGATE_KEYS)")
    s.add_argument("--max-queue", type=_positive_int, default=16, help="requests waiting before 429")
    s.add_argument("--max-tokens-cap", type=_positive_int, default=2048)
    s.add_argument("--max-body-bytes", type=_positive_int, default=1_000_000)
    s.add_argument("--session-ttl", type=_positive_int, default=3600, help="seconds a session outlives its last use")
    s.add_argument("--sessions", default=None, metavar="URL",
                   help="where sessions live: 'memory' (this process, the default) or redis://HOST:PORT/DB, shared by "
                        "every replica that names it (also $INGATE_SESSIONS)")
    s.add_argument("--drain-seconds", type=_positive_int, default=30,
                   help="on SIGTERM: stop accepting, let streams in flight finish this long, then cancel them "
                        "(each audited)")
    s.add_argument("--sessions-prefix", default="ingate",
                   help="the Redis key prefix: one per deployment sharing a Redis (default: ingate)")
    s.add_argument("--governance-detail", choices=("minimal", "full"), default="minimal",
                   help="what clients see of governance: minimal (rule, action, position, a generic sentence) or "
                        "full (also the internal detail and, with store_text, the matched text); an API key "
                        "written KEY:POLICIES:full overrides it for that key")
    s.add_argument("--audit", default=None, help="audit SQLite path or postgresql:// URL, shared by replicas "
                   "(default: $INGATE_AUDIT or ~/.local/state/ingate/audit.sqlite3)")
    _key_flag(s)
    k = sub.add_parser("check", help="validate a policy and print a summary")
    k.add_argument("policy")
    k.add_argument("--text", default=None, help="also report what the policy would match in TEXT")
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
    d = sub.add_parser("doctor", help="check the setup and print what a bug report needs")
    d.add_argument("--model", default=None, help=MODEL_HELP)
    d.add_argument("--audit", default=None, help="audit SQLite path to check (default: $INGATE_AUDIT or "
                                                 "~/.local/state/ingate/audit.sqlite3)")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    _key_flag(d)
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
    return ap


def _policy(arg: str | None) -> Policy:
    try:
        policy = load_policy(arg)
        if policy.source != "<none>":
            from ingate.gate.compile import compile_policy

            compile_policy(policy)  # surfaces regex and phrase errors before any model loads
        return policy
    except PolicyError as e:
        raise UserError(str(e), code=2) from None


def _params(args: argparse.Namespace):
    from ingate.loop import GenerationParams

    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0, got {args.top_k}", code=2)
    return GenerationParams(max_tokens=args.max_tokens,
                            sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p,
                                                    top_k=args.top_k, seed=args.seed))


def _core(args: argparse.Namespace, policies: list[Policy]):
    """The engine core (its own process unless INGATE_ENGINE_PROCESS=0), policies compiled and warm."""
    from ingate.audit import AuditError
    from ingate.core import open_core

    try:
        return open_core(args.model, args.audit, policies, audit_key_file=args.audit_key_file)
    except (EngineError, AuditError) as e:
        raise UserError(str(e)) from None


def _sessions(args: argparse.Namespace):
    """The session store --sessions (or $INGATE_SESSIONS) names; None for this process's memory."""
    url = args.sessions or os.environ.get("INGATE_SESSIONS") or "memory"
    if url == "memory":
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise UserError(f"--sessions {url!r}: use 'memory' or redis://HOST:PORT/DB", code=2)
    from ingate.session import StoreError
    from ingate.session_redis import RedisSessionStore

    try:
        store = RedisSessionStore(url, args.sessions_prefix, args.session_ttl)
    except StoreError as e:
        raise UserError(str(e), code=2) from None
    h = store.health()
    if not h["ok"]:  # serve anyway: each policy's on_store_error decides, and /healthz says it
        print(f"ingate: warning: the session store {h['url']} is unreachable ({h['error']}); requests whose policy "
              "needs session state are refused until it is back (session: {on_store_error: allow} serves them)",
              file=sys.stderr, flush=True)
    return store


def _cores(args: argparse.Namespace, policies: list[Policy]) -> dict:
    """Model name -> core: the models file's, the one --upstream, or the one local model."""
    from ingate.audit import AuditError, open_audit
    from ingate.upstream.config import LocalModel, ModelsError, load_models, upstream

    given = [f for f, v in (("--model", args.model), ("--models", args.models), ("--upstream", args.upstream)) if v]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} each say which models to serve; give one of them", code=2)
    if args.engine == "vllm":
        if args.models or args.upstream:
            raise UserError("--engine vllm serves one vLLM model; drop --models/--upstream, or list the vLLM "
                            "server in a models file as an upstream (capabilities: [+ingate_mask])", code=2)
        return _vllm_core(args, policies)
    if not args.models and not args.upstream:
        core = _core(args, policies)
        return {core.name: core}
    try:
        if args.models:
            specs = load_models(args.models)
        else:
            name = args.upstream_model or _first_upstream_model(args.upstream, args.upstream_key_env)
            caps = [c.strip() for c in args.upstream_capabilities.split(",") if c.strip()] \
                if args.upstream_capabilities is not None else None
            specs = [upstream(name, args.upstream, name, args.upstream_kind, args.upstream_key_env, caps,
                              tokenizer=args.upstream_tokenizer)]
    except ModelsError as e:
        raise UserError(str(e), code=2) from None
    from ingate.gate.compile import compile_policy
    from ingate.upstream.core import UpstreamCore

    for p in policies:
        compile_policy(p)  # every upstream request's gate starts from these, compiled once
    cores: dict = {}
    audit = None
    try:
        for spec in specs:
            if isinstance(spec, LocalModel):
                args.model = spec.gguf
                cores[spec.name] = _core(args, policies)
                continue
            if audit is None:
                audit = open_audit(args.audit, args.audit_key_file)
            cores[spec.name] = UpstreamCore(spec, audit)
    except (AuditError, ModelsError) as e:
        raise UserError(str(e), code=2 if isinstance(e, ModelsError) else 1) from None
    return cores


def _vllm_core(args: argparse.Namespace, policies: list[Policy]) -> dict:
    """--engine vllm: start vLLM with the plugin (stopped at exit) and govern it as an upstream."""
    import atexit
    from pathlib import Path

    from ingate.audit import AuditError, open_audit
    from ingate.upstream.config import upstream
    from ingate.upstream.core import UpstreamCore
    from ingate.vllm.launch import LaunchError, VllmServer

    name = "smollm2" if args.model in (None, "embedded") else Path(args.model).name
    srv = VllmServer(args.model, name, policies, args.engine_args, python=args.vllm_python)
    try:
        srv.start()
    except LaunchError as e:
        raise UserError(str(e)) from None
    atexit.register(srv.stop)  # an exit without the server's shutdown; on SIGTERM the core's close stops it
    spec = upstream(name, srv.base_url, name, "vllm", capabilities=["+ingate_mask"],
                    tokenizer="embedded" if args.model in (None, "embedded") else None,
                    max_concurrency=VLLM_CONCURRENCY)
    try:
        core = UpstreamCore(spec, open_audit(args.audit, args.audit_key_file))
    except AuditError as e:
        srv.stop()
        raise UserError(str(e)) from None
    core.on_close.append(srv.stop)  # the server's shutdown closes its cores: uvicorn then ends by the signal
    return {name: core}


def _first_upstream_model(base_url: str, key_env: str | None) -> str:
    """The first model an upstream lists (for `--upstream URL` without --upstream-model)."""
    import httpx

    headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if key_env and key_env in os.environ else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"cannot list the models of {base_url} ({type(e).__name__}: {e}); give "
                        "--upstream-model NAME") from None


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
    policy = _policy(args.policy)
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
    policy = _policy(args.policy)
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


def cmd_check(args: argparse.Namespace) -> int:
    from ingate.gate.compile import compile_policy
    from ingate.gate.explain import policy_report, text_report

    compiled = compile_policy(_policy(args.policy))
    for line in policy_report(compiled) + (text_report(compiled, args.text) if args.text is not None else []):
        print(line)
    return 0


def _semantic_rule(policy: Policy, wanted: str | None) -> SemanticRuleSpec:
    rules = policy.semantic_rules
    ids = ", ".join(r.id for r in rules)
    if not rules:
        raise UserError(f"{policy.source}: policy {policy.name!r} has no semantic rule; calibrate measures the "
                        "threshold of a rule with semantic: (deny or allow_only concepts)", code=2)
    if wanted is None:
        if len(rules) > 1:
            raise UserError(f"{policy.source} has {len(rules)} semantic rules; pick one with --rule ({ids})", code=2)
        return rules[0]
    for r in rules:
        if r.id == wanted:
            return r
    other = " is not a semantic rule" if any(r.id == wanted for r in policy.rules) else " does not exist"
    raise UserError(f"--rule {wanted!r}{other} in {policy.source}; semantic rules: {ids}", code=2)


def _held_out(spec: SemanticRuleSpec, data: list[tuple[str, bool]], args: argparse.Namespace
              ) -> list[tuple[str, bool]]:
    """A head is measured only on texts it was not trained on: a file that repeats its training data
    (the same text, or a near duplicate) is refused, or with --drop-overlap thinned to what is new."""
    head = spec.semantic.head
    if head is None:
        return data
    from ingate.labelled import NEAR_DUPLICATE, overlap

    hits = overlap([r[0] for r in head.rows], [t for t, _ in data])
    if not hits:
        return data
    if not args.drop_overlap:
        ex = "; ".join(f"row {h.held_out + 1} {'repeats' if h.similarity == 1.0 else 'nearly repeats'} training "
                       f"text {h.train + 1} ({data[h.held_out][0][:60]!r})" for h in hits[:3])
        raise UserError(f"{args.labelled}: {len(hits)} of its {len(data)} texts overlap the training data of rule "
                        f"{spec.id} ({head.train}; exact after folding case and punctuation, or word n-gram cosine "
                        f">= {NEAR_DUPLICATE}), so it is not held out: {ex}. Measure on texts the head never saw, "
                        "or pass --drop-overlap to leave those out", code=2)
    drop = {h.held_out for h in hits}
    kept = [d for i, d in enumerate(data) if i not in drop]
    print(f"ingate calibrate: left out {len(drop)} of {len(data)} texts that overlap the head's training data",
          file=sys.stderr)
    n_ok = sum(a for _, a in kept)
    if n_ok in (0, len(kept)):
        raise UserError(f"{args.labelled}: after leaving out the overlap, {len(kept)} texts of one class remain; "
                        "AUROC needs both", code=2)
    return kept


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ingate.calibrate import CalibrationError, calibrate, plot_roc, read_labelled, roc_title

    try:
        policy = load_policy(args.policy)
    except PolicyError as e:
        raise UserError(str(e), code=2) from None
    spec = _semantic_rule(policy, args.rule)
    try:
        data = read_labelled(args.labelled)
    except CalibrationError as e:
        raise UserError(str(e), code=2) from None
    png = Path(args.png) if args.png else Path.cwd() / f"calibrate-{spec.id}.png"
    if not png.parent.is_dir():
        raise UserError(f"--png {str(png)!r}: directory {str(png.parent)!r} does not exist", code=2)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("calibrate draws its ROC curve with matplotlib, which is missing; install it with "
                        "`pip install 'ingate[semantic]'`") from None
    from ingate.semantic.concepts import compile_semantic

    try:
        rule = compile_semantic(policy.source, spec)
    except PolicyError as e:
        raise UserError(str(e)) from None  # the encoder cannot load here: an install problem, not bad input
    data = _held_out(spec, data, args)
    cal = calibrate(rule, data, args.max_false_block)
    try:
        plot_roc(cal.suggestion, png, roc_title(cal.rule, cal.mode, cal.encoder, cal.suggestion.auroc, cal.n))
    except OSError as e:
        raise UserError(f"--png {str(png)!r}: cannot write the ROC curve: {e}", code=2) from None
    png = png.resolve()
    if args.json:
        print(json.dumps(cal.to_json(str(png))))
    else:
        print("\n".join(cal.report(policy.source, args.labelled, str(png))))
    return 0


def _api_keys(args: argparse.Namespace):
    """The keys of --api-key and $INGATE_API_KEYS (comma-separated), and of --keys FILE (ingate.keys)."""
    from ingate.keys import Keys, KeysError

    specs = list(args.api_key or []) + [k for k in os.environ.get("INGATE_API_KEYS", "").split(",") if k.strip()]
    try:
        return Keys.from_specs(specs, args.keys or os.environ.get("INGATE_KEYS") or None)
    except KeysError as e:
        raise UserError(str(e), code=2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    policies: dict[str, Policy] = {}
    for arg in args.policy or [None]:
        p = _policy(arg)
        if p.name in policies:
            raise UserError(f"two policies are named {p.name!r}; give each loaded policy its own name", code=2)
        policies[p.name] = p
    keys = _api_keys(args)
    from ingate.keys import KeysError

    try:
        keys.check_policies(policies)
    except KeysError as e:
        raise UserError(str(e), code=2) from None
    sessions = _sessions(args)
    cores = _cores(args, list(policies.values()))
    import threading

    import uvicorn

    from ingate.server import ServerConfig, create_app

    app = create_app(cores, ServerConfig(policies=policies, api_keys=keys, max_queue=args.max_queue,
                                        max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
                                        session_ttl=args.session_ttl, governance_detail=args.governance_detail,
                                        sessions=sessions, drain_seconds=args.drain_seconds))
    url = f"http://{args.host}:{args.port}"
    auth = ' -H "Authorization: Bearer $KEY"' if keys else ""
    first = next(iter(cores))
    print(f"ingate: serving {', '.join(cores)} with policies {', '.join(policies)} on {url}\n"
          f"  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
          f"    -d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"Hello\"}}]}}'", file=sys.stderr, flush=True)
    # On SIGTERM (or Ctrl-C): /readyz turns 503 and new requests get 503 at once; streams in flight
    # have --drain-seconds to finish, then are cancelled (an error event each, audited); uvicorn's
    # own cut, a few seconds later, is only the backstop.
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=args.drain_seconds + 5))
    handle_exit = server.handle_exit

    def draining(sig, frame) -> None:
        if not app.state.server.draining:
            app.state.server.draining = True
            threading.Timer(args.drain_seconds, app.state.server.drain).start()
        handle_exit(sig, frame)

    server.handle_exit = draining  # type: ignore[method-assign]
    server.run()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from ingate.audit import AuditError, describe, open_audit

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.cmd == "serve" and args.engine == "vllm"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.engine_args = extra  # serve --engine vllm: what vLLM takes
    handler = {"generate": cmd_generate, "chat": cmd_chat, "check": cmd_check, "audit": cmd_audit,
               "serve": cmd_serve, "calibrate": cmd_calibrate, "doctor": cmd_doctor}[args.cmd]
    try:
        return handler(args)
    except UserError as e:
        print(f"ingate: error: {e}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
