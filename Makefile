# The two commands of the README:
#   make run    set up, then start the whole hub on embedded defaults (Ctrl-C stops it)
#   make test   set up, then run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

.env:
	cp .env.example .env

run: $(STAMP) .env
	$(BIN)/campushub up

lint: $(STAMP)
	$(BIN)/ruff check campushub tests benchmarks
	$(BIN)/ruff format --check campushub tests benchmarks

test: $(STAMP) lint
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_connectors.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
