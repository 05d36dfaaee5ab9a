# skewscope: the two commands of the README, and the pieces they are made of.
# `make demo` and `make test` each set up everything a fresh machine lacks.

PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
DURATION ?= 120
STAMP   = $(VENV)/.installed

.PHONY: demo test lint typecheck check services down bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

services: $(STAMP)
	$(BIN)/skewscope infra up

demo: $(STAMP)
	$(BIN)/skewscope demo --duration $(DURATION)

test: $(STAMP) services
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

down:
	-$(BIN)/skewscope infra down

bench: $(STAMP) services
	$(BIN)/skewscope bench --json bench/results/bench.json

clean: down
	rm -rf $(VENV) var out .mypy_cache .ruff_cache .pytest_cache
