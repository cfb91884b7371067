"""The composition root: the cores `ingate serve`, `generate` and `chat` run, built from settings.

    open_core(model, ...)        ingate's own engine: its own process unless INGATE_ENGINE_PROCESS=0
    open_cores(settings, ...)    model name -> core: a models file's, one --upstream, one vLLM, or one local

Errors are typed: `SettingsError` (the settings are wrong: exit 2) and `StartError` (something
could not start: exit 1); the CLI prints their one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingate.core import Core
from ingate.extras import MissingExtra, check
from ingate.policy import Policy

VLLM_CONCURRENCY = 64  # --engine vllm: streams in flight to vLLM (it batches them)
# `ingate serve --parallel`: streams the embedded engine runs at once. On 2 cores batched decode
# reaches about 1.2x one stream's tokens/s at 8 and 16 (docs/serving.md): 8 starts every
# stream without a queue; the served path does not yet deliver the curve (docs/serving.md, "Measured").
DEFAULT_PARALLEL = 8


class ComposeError(Exception):
    """A core cannot be built; the message says what to fix. `code`: the CLI's exit status."""

    code = 1


class SettingsError(ComposeError):
    code = 2


class StartError(ComposeError):
    code = 1


@dataclass
class Settings:
    """What `ingate serve` was told about its models (the flags, or their INGATE_* variables)."""

    model: str | None = None  # a GGUF (llama.cpp:PATH); vLLM: a Hugging Face directory or 'embedded'
    models: str | None = None  # a models file
    upstream: str | None = None  # an OpenAI-compatible API's root
    upstream_model: str | None = None
    upstream_key_env: str | None = None
    upstream_kind: str = "generic"
    upstream_capabilities: str | None = None
    upstream_tokenizer: str | None = None
    engine: str = "llamacpp"  # or vllm
    vllm_python: str | None = None
    engine_args: list[str] = field(default_factory=list)  # what vLLM takes
    audit: str | None = None
    audit_key_file: str | None = None
    parallel: int = DEFAULT_PARALLEL  # local engines: generations at once (the batched loop)
    prefix_cache_mb: int | None = None  # local engines: the prefix cache's bound (None: the default; 0: off)
    step_tokens: int | None = None  # local engines: tokens one step of the batched loop decodes at most


def isolated() -> bool:
    """INGATE_ENGINE_PROCESS: 1 (default) runs the engine core in its own process; 0 in the caller's."""
    from ingate.engines.base import EngineError

    raw = os.environ.get("INGATE_ENGINE_PROCESS", "1").strip().lower()
    if raw not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise EngineError(f"INGATE_ENGINE_PROCESS={raw!r}: use 1 (own process, the default) or 0 (in process)")
    return raw in ("1", "true", "yes", "on")


def open_core(model: str | Path | None, audit: str | Path | None, policies: Sequence[Policy],
              use_audit: bool = True, isolate: bool | None = None, audit_key_file: str | Path | None = None,
              parallel: int = 0, prefix_cache_mb: int | None = None, step_tokens: int | None = None) -> Core:
    """ingate's own engine, policies compiled and warm: its own process unless INGATE_ENGINE_PROCESS=0.
    `parallel`: generations at once through the batched loop (0: one at a time, the CLI's way)."""
    from ingate.engines.base import EngineError
    from ingate.store.audit import AuditError

    if parallel < 0:
        raise SettingsError(f"--parallel {parallel}: give 1 or more")
    try:
        check("llama_cpp")  # here, before a probe or an engine process fails on it less clearly
    except MissingExtra as e:
        raise StartError(str(e)) from None
    cache = prefix_cache_mb << 20 if prefix_cache_mb is not None else None
    try:
        if isolate if isolate is not None else isolated():
            from ingate.engine_core import EngineCore

            return EngineCore(model, audit, policies, use_audit=use_audit, audit_key_file=audit_key_file,
                              parallel=parallel, prefix_cache_bytes=cache, step_tokens=step_tokens)
        from ingate.batch import STEP_TOKENS
        from ingate.runtime import LocalCore, Runtime

        rt = Runtime.load(model, audit, use_audit=use_audit, audit_key_file=audit_key_file, parallel=parallel,
                          prefix_cache_bytes=cache, step_tokens=step_tokens or STEP_TOKENS)
        for p in policies:
            rt.warm(p)
        return LocalCore(rt)
    except (EngineError, AuditError) as e:
        raise StartError(str(e)) from None


def open_cores(s: Settings, policies: Sequence[Policy]) -> dict[str, Core]:
    """Model name -> core: the models file's, the one --upstream, one vLLM, or the one local model."""
    given = [f for f, v in (("--model", s.model), ("--models", s.models), ("--upstream", s.upstream)) if v]
    if len(given) > 1:
        raise SettingsError(f"{' and '.join(given)} each say which models to serve; give one of them")
    if s.engine == "vllm":
        if s.models or s.upstream:
            raise SettingsError("--engine vllm serves one vLLM model; drop --models/--upstream, or list the vLLM "
                                "server in a models file as an upstream (capabilities: [+ingate_mask])")
        return open_vllm(s, policies)
    if not s.models and not s.upstream:
        core = open_core(s.model, s.audit, policies, audit_key_file=s.audit_key_file, **_batching(s))
        return {core.name: core}
    from ingate.gate.compile import compile_policy
    from ingate.store.audit import AuditError, AuditLog, open_audit
    from ingate.upstream.config import LocalModel, ModelsError
    from ingate.upstream.core import UpstreamCore

    specs = _model_specs(s)
    for p in policies:
        compile_policy(p)  # every upstream request's gate starts from these, compiled once
    cores: dict[str, Core] = {}
    audit: AuditLog | None = None
    try:
        for spec in specs:
            if isinstance(spec, LocalModel):
                cores[spec.name] = open_core(spec.gguf, s.audit, policies, audit_key_file=s.audit_key_file,
                                             **_batching(s))
                continue
            if audit is None:
                audit = open_audit(s.audit, s.audit_key_file)
            cores[spec.name] = UpstreamCore(spec, audit)
    except ModelsError as e:
        raise SettingsError(str(e)) from None
    except AuditError as e:
        raise StartError(str(e)) from None
    return cores


def _batching(s: Settings) -> dict:
    return {"parallel": s.parallel, "prefix_cache_mb": s.prefix_cache_mb, "step_tokens": s.step_tokens}


def _model_specs(s: Settings) -> list:
    from ingate.upstream.config import ModelsError, load_models, upstream

    try:
        if s.models:
            return load_models(s.models)
        assert s.upstream is not None
        name = s.upstream_model or first_upstream_model(s.upstream, s.upstream_key_env)
        caps = [c.strip() for c in s.upstream_capabilities.split(",") if c.strip()] \
            if s.upstream_capabilities is not None else None
        return [upstream(name, s.upstream, name, s.upstream_kind, s.upstream_key_env, caps,
                         tokenizer=s.upstream_tokenizer)]
    except ModelsError as e:
        raise SettingsError(str(e)) from None


def open_vllm(s: Settings, policies: Sequence[Policy]) -> dict[str, Core]:
    """--engine vllm: start vLLM with the plugin (stopped with its core) and govern it as an upstream."""
    import atexit

    from ingate.store.audit import AuditError, open_audit
    from ingate.upstream.config import upstream
    from ingate.upstream.core import UpstreamCore
    from ingate.vllm.launch import LaunchError, VllmServer

    name = "smollm2" if s.model in (None, "embedded") else Path(s.model).name
    srv = VllmServer(s.model, name, policies, s.engine_args, python=s.vllm_python)
    try:
        srv.start()
    except LaunchError as e:
        raise StartError(str(e)) from None
    atexit.register(srv.stop)  # an exit without the server's shutdown; on SIGTERM the core's close stops it
    spec = upstream(name, srv.base_url, name, "vllm", capabilities=["+ingate_mask"],
                    tokenizer="embedded" if s.model in (None, "embedded") else None,
                    max_concurrency=VLLM_CONCURRENCY)
    try:
        core = UpstreamCore(spec, open_audit(s.audit, s.audit_key_file))
    except AuditError as e:
        srv.stop()
        raise StartError(str(e)) from None
    core.on_close.append(srv.stop)  # the server's shutdown closes its cores: uvicorn then ends by the signal
    return {name: core}


def first_upstream_model(base_url: str, key_env: str | None) -> str:
    """The first model an upstream lists (for `--upstream URL` without --upstream-model)."""
    import httpx

    headers = {"Authorization": f"Bearer {os.environ[key_env]}"} if key_env and key_env in os.environ else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=10)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise StartError(f"cannot list the models of {base_url} ({type(e).__name__}: {e}); give "
                         "--upstream-model NAME") from None
