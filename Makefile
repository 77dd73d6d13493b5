# Two commands for a fresh clone: `make demo` and `make test`. Each makes .venv and installs into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test lint bench clean

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache demo.sqlite3*
