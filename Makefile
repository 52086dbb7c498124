# Two commands do all the set-up on a fresh machine (see README.md):
#   make demo   - create .venv, install attnkit, print the kernel table and run a tiny demo
#   make test   - create .venv, install attnkit with its test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/attnkit kernels
	$(BIN)/attnkit demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q --runslow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
