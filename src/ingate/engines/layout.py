"""Which weight layout llama.cpp runs with, chosen so that no CPU crashes: INGATE_LLAMA_REPACK.

  auto (default)  probe once in a child process (ingate.engines.probe) and take the fastest layout
                  that survived and computed the same logits as plain weights:
                    on     the extra buffer types (repacked/AMX weights) for prompts and decode;
                    split  single-token decode through them, prompts through plain weights,
                           when batches through them crash or disagree;
                    off    plain weights, when even single-token decode through them fails.
  on|off|split    that layout, no probe (you take responsibility for `on`).

The verdict is cached per CPU (model name and flags), model file, llama-cpp-python version and
build (its shared libraries' sizes and times: a rebuild of the same version can differ), under
$INGATE_CACHE_DIR/probe/, so only the first start on a machine pays for the probe (~2 s).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingate.engines.base import EngineError, exit_reason

ENV = "INGATE_LLAMA_REPACK"
CHOICES = ("auto", "on", "off", "split")
PROBE_VERSION = 1
PROBE_TIMEOUT_S = 300.0


def requested() -> str:
    raw = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if raw not in CHOICES:
        raise EngineError(f"{ENV}={raw!r} is not one of {', '.join(CHOICES)}")
    return raw


@dataclass
class LayoutChoice:
    layout: str  # on | off | split
    reason: str
    requested: str = "auto"
    stages: dict = field(default_factory=dict)  # what the probe saw, stage -> result
    cached: bool = False
    cache_file: str | None = None
    probe_s: float | None = None
    system_info: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def cpu_info() -> dict:
    """CPU model and the flags that decide llama.cpp's kernels (what a bug report needs)."""
    model, flags = "", list[str]()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "hardware", "cpu model") and not model:
            model = v.strip()
        elif k in ("flags", "features") and not flags:
            flags = v.split()
    keep = ("avx", "amx", "f16c", "fma", "sse4", "ssse3", "bmi2", "vnni", "asimd", "sve", "neon", "dotprod",
            "i8mm", "bf16")
    interesting = sorted({f for f in flags if f.startswith(keep) or any(x in f for x in ("vnni", "bf16"))})
    return {"model": model or os.uname().machine, "flags": interesting, "cores": os.cpu_count()}


def llama_build() -> dict:
    """llama-cpp-python's version and a fingerprint of its shared libraries (sizes and times)."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise EngineError("llama-cpp-python is not installed; run `make serve` or "
                          "`pip install llama-cpp-python`") from None
    spec = importlib.util.find_spec("llama_cpp")
    libs: list[str] = []
    for loc in (spec.submodule_search_locations or []) if spec else []:
        for so in sorted(Path(loc, "lib").glob("*.so*")):
            st = so.stat()
            libs.append(f"{so.name}:{st.st_size}:{st.st_mtime_ns}")
    return {"version": version, "libs": hashlib.sha256("\n".join(libs).encode()).hexdigest()[:16]}


def probe_key(model_path: Path) -> str:
    st = model_path.stat()
    parts = {"probe": PROBE_VERSION, "cpu": cpu_info(), "llama": llama_build(),
             "model": [str(model_path.resolve()), st.st_size, st.st_mtime_ns],
             "forced_crash": os.environ.get("INGATE_PROBE_CRASH", "")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _cache_file(key: str) -> Path | None:
    from ingate.paths import cache_dir

    d = cache_dir()
    return d / "probe" / f"{key}.json" if d is not None else None


def choose(model_path: Path) -> LayoutChoice:
    """The layout to load `model_path` with: forced by INGATE_LLAMA_REPACK, cached, or probed now."""
    req = requested()
    if req != "auto":
        return LayoutChoice(req, f"{ENV}={req}", requested=req)
    key = probe_key(model_path)
    path = _cache_file(key)
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
            return LayoutChoice(**(data | {"cached": True, "cache_file": str(path)}))
        except (OSError, ValueError, TypeError):
            pass  # unreadable or from another version: probe again
    choice = probe(model_path)
    if path is not None:
        choice.cache_file = str(path)
        _write_atomic(path, json.dumps(choice.to_dict() | {"cached": False}, indent=1))
    return choice


def probe(model_path: Path, timeout: float = PROBE_TIMEOUT_S) -> LayoutChoice:
    """Run the probe in a child process and read its verdict from how far it got."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "ingate.engines.probe", str(model_path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=os.environ | {"PYTHONFAULTHANDLER": ""})
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    stages: dict = {}
    system_info = None
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("stage") == "start":
            system_info = rec.get("system_info")
        elif "stage" in rec:
            stages[rec.pop("stage")] = rec
    death = _death(rc, err)
    nxt = next((s for s in ("load", "decode", "batch") if s not in stages), None)
    if nxt is not None:
        stages[nxt] = {"ok": False, "error": death}
    elapsed = round(time.perf_counter() - t0, 2)

    def ok(s: str) -> bool:
        return bool(stages.get(s, {}).get("ok"))

    if ok("batch") and ok("decode"):
        layout, why = "on", "the probe ran single tokens and batches through llama.cpp's extra buffer types, " \
                            "with the same logits as plain weights"
    elif ok("decode"):
        layout, why = "split", f"the probe's batch through the extra buffer types {_what(stages['batch'])}; " \
                               "decoding single tokens through them, prompts through plain weights"
    else:
        failed = "load" if not ok("load") else "decode"
        layout, why = "off", f"the probe's {failed} through the extra buffer types {_what(stages[failed])}; " \
                             "plain weights everywhere (about half the decode speed on AMX CPUs)"
    return LayoutChoice(layout, "probe: " + why, stages=stages, probe_s=elapsed, system_info=system_info)


def _death(rc: int | None, stderr: str) -> str:
    if rc is None:
        return "hung (timed out)"
    if rc == 0:
        return "stopped early"
    tail = stderr.strip().splitlines()[-1] if rc > 0 and stderr.strip() else ""
    return exit_reason(rc) + (f" ({tail[:200]})" if tail else "")


def _what(result: dict) -> str:
    if "error" in result:
        return result["error"]
    return f"computed different logits (correlation {result.get('correlation')} with plain weights)"


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".probe-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next start probes again, which is slower but correct
