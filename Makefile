# Two commands for a fresh clone: `make demo` and `make test`. Each makes .venv and installs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test lint bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[demo]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

## Run the demo: a provider simulator, a worker and ~200 operations (Redis from REDIS_URL, or a private one).
demo: $(VENV)/.demo-installed
	$(BIN)/integrations demo

## Lint, type-check and run the tests (real Redis, SQLite, PostgreSQL when TEST_POSTGRES_URL is set).
test: $(VENV)/.dev-installed lint
	$(BIN)/pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

## Chaos: 2,000 operations through enqueue under each of six faults, each in a fresh setup (about 7 minutes).
# e.g. make chaos CHAOS_ARGS="--operations 500 --scenario worker-kill"; python -m bench.chaos --help lists the options.
chaos: $(VENV)/.dev-installed
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

## Scale: a worker's memory over 100,000 operations; operator lookups and pruning on a 1,000,000-row ledger.
# SQLite, and PostgreSQL too when BENCH_DATABASE_URL is set. e.g. make scale SCALE_ARGS="--operations 20000";
# python -m bench.scale --help lists the options.
.PHONY: scale
scale: $(VENV)/.dev-installed
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo.sqlite3*
