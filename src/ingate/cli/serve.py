"""ingate serve: the OpenAI-compatible governed API, its models built by `ingate.compose`."""

from __future__ import annotations

import argparse
import logging

from ingate.cli.common import UserError, load
from ingate.compose import ComposeError, Settings, open_cores
from ingate.policy import Policy

log = logging.getLogger("ingate.serve")


def _api_keys(args: argparse.Namespace):
    """The keys of --api-key, of --keys FILE (ingate.keys), and the console's --admin-key (each also
    from its $INGATE_* variable: ingate.cli.env)."""
    from ingate.keys import Keys, KeysError

    try:
        return Keys.from_specs(args.api_key or [], args.keys, args.admin_key or [])
    except KeysError as e:
        raise UserError(str(e), code=2) from None


def _check_console(args: argparse.Namespace, keys) -> None:
    """--console is guarded whenever keys are configured (docs/console.md): refuse what would leave it
    open, or give a key that guards nothing."""
    if args.admin_key and not args.console:
        raise UserError("--admin-key opens the console, which is off: add --console (or drop --admin-key)", code=2)
    if not args.console:
        return
    if keys and not keys.admins:
        raise UserError("--console: this server requires API keys, so its console needs an admin key: pass "
                        "--admin-key KEY (or set $INGATE_ADMIN_KEYS), or mark a keys-file entry 'admin: true'", code=2)
    if not keys.admins and not (args.host in ("localhost", "::1") or args.host.startswith("127.")):
        log.warning("the console at http://%s:%s/console/ is open to anyone who can reach it (no key is "
                    "configured): give --admin-key KEY to guard it", args.host, args.port)


def _sessions(args: argparse.Namespace):
    """The session store --sessions (or $INGATE_SESSIONS) names: this process's memory by default."""
    from ingate.store.sessions import StoreError, open_sessions

    url = args.sessions or "memory"
    try:
        store = open_sessions(url, args.sessions_prefix, args.session_ttl)
    except StoreError as e:
        raise UserError(str(e), code=2) from None
    h = store.health()
    if not h["ok"]:  # serve anyway: each policy's on_store_error decides, and /healthz says it
        log.warning("the session store %s is unreachable (%s); requests whose policy needs session state are "
                    "refused until it is back (session: {on_store_error: allow} serves them)", h["url"], h["error"])
    return store


def _limits(args: argparse.Namespace):
    """Where the keys' limits are counted: with the sessions (--sessions), shared by the replicas."""
    from ingate.store.limits import open_limits
    from ingate.store.sessions import StoreError

    try:
        return open_limits(args.sessions or "memory", args.sessions_prefix)
    except StoreError as e:
        raise UserError(str(e), code=2) from None


def _vaults(args: argparse.Namespace):
    """Session vaults beside the sessions: in Redis, encrypted under the deployment's vault key."""
    from ingate.store.audit import AuditError
    from ingate.store.vaults import open_vaults

    url = args.sessions or "memory"  # $INGATE_SESSIONS is already in args (ingate.cli.env)
    try:
        return open_vaults(url, args.sessions_prefix, args.session_ttl, args.vault_key_file)
    except AuditError as e:
        raise UserError(str(e), code=2) from None


def _cores(args: argparse.Namespace, policies: list[Policy]) -> dict:
    settings = Settings(model=args.model, models=args.models, upstream=args.upstream,
                        upstream_model=args.upstream_model, upstream_key_env=args.upstream_key_env,
                        upstream_kind=args.upstream_kind, upstream_capabilities=args.upstream_capabilities,
                        upstream_tokenizer=args.upstream_tokenizer, engine=args.engine, vllm_python=args.vllm_python,
                        engine_args=args.engine_args, audit=args.audit, audit_key_file=args.audit_key_file,
                        prefix_cache_mb=args.prefix_cache_mb, step_tokens=args.step_tokens)
    if args.parallel is not None:
        settings.parallel = args.parallel
    try:
        return open_cores(settings, policies)
    except ComposeError as e:
        raise UserError(str(e), e.code) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from ingate import logs

    logs.configure(args.log_level, args.log_format)  # once, before anything logs
    policies: dict[str, Policy] = {}
    for arg in args.policy or [None]:
        p = load(arg)
        if p.name in policies:
            raise UserError(f"two policies are named {p.name!r}; give each loaded policy its own name", code=2)
        policies[p.name] = p
    keys = _api_keys(args)
    _check_console(args, keys)
    from ingate.keys import KeysError

    try:
        keys.check_policies(policies)
    except KeysError as e:
        raise UserError(str(e), code=2) from None
    sessions = _sessions(args)
    vaults = _vaults(args) if any(p.mask is not None and p.mask.vault == "session" for p in policies.values()) \
        else None
    cores = _cores(args, list(policies.values()))
    import threading

    import uvicorn

    from ingate.server import ServerConfig, create_app

    app = create_app(cores, ServerConfig(policies=policies, api_keys=keys, max_queue=args.max_queue,
                                        max_queue_wait=args.max_queue_wait,
                                        max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes,
                                        session_ttl=args.session_ttl, governance_detail=args.governance_detail,
                                        sessions=sessions, vaults=vaults, drain_seconds=args.drain_seconds,
                                        console=args.console, limits=_limits(args)))
    url = f"http://{args.host}:{args.port}"
    auth = ' -H "Authorization: Bearer $KEY"' if keys else ""
    first = next(iter(cores))
    console = f"\n  console: {url}/console/{' (sign in with an admin key)' if keys.admins else ''}" \
        if args.console else ""
    log.info(f"serving {', '.join(cores)} with policies {', '.join(policies)} on {url}\n"
             f"  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' \\\n"
             f"    -d '{{\"model\": \"{first}\", \"messages\": [{{\"role\": \"user\", "
             f"\"content\": \"Hello\"}}]}}'{console}")
    # On SIGTERM (or Ctrl-C): /readyz turns 503 and new requests get 503 at once; streams in flight
    # have --drain-seconds to finish, then are cancelled (an error event each, audited); uvicorn's
    # own cut, a few seconds later, is only the backstop.
    # uvicorn logs through ingate's handler (log_config=None); ingate writes the access line itself
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           log_config=None, access_log=False,
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
