# Tollgate: `make run` serves the demo, `make test` runs the whole suite. Both set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
PYTEST_WORKERS ?= 2
CLOCK_AHEAD_YEARS ?= 8

.PHONY: run test lint bench install install-dev chromium wrk clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

# Debian's chromium drives the browser tests (Playwright cannot download browsers here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install -y chromium'" >&2; exit 1; fi; }

# localstripe on :8420, the app on :5000, the demo newspaper on :5001 (scripts/dev.py says more).
run: install
	$(BIN)/python scripts/dev.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: install-dev chromium lint
	@echo "== SQLite pass"
	$(BIN)/pytest -n $(PYTEST_WORKERS) -m "not postgres_only and not needs_redis"
	@echo "== SQLite pass with the clock $(CLOCK_AHEAD_YEARS) years ahead (tests/clock_ahead.py)"
	$(BIN)/pytest -n $(PYTEST_WORKERS) -q -m "not postgres_only and not needs_redis" --clock-ahead=$(CLOCK_AHEAD_YEARS)
	@echo "== PostgreSQL pass (with Redis when it answers)"
	@marks="not needs_redis"; \
	if $(BIN)/python -m tests.redis_probe; then marks=""; \
	elif [ -n "$$REQUIRE_SERVICES" ]; then echo "REQUIRE_SERVICES is set: failing." >&2; exit 1; fi; \
	if TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m tests.pg_probe; then \
	  TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/pytest -n $(PYTEST_WORKERS) -m "$$marks"; \
	elif [ -n "$$REQUIRE_SERVICES" ]; then echo "REQUIRE_SERVICES is set: failing." >&2; exit 1; fi

bench: install-dev wrk
	$(BIN)/python bench/run.py

# The load generator of the API benchmark, from Debian's packages.
wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing: run 'sudo apt-get install -y wrk'" >&2; exit 1; fi; }

clean:
	rm -rf $(VENV) instance test-output .pytest_cache .mypy_cache .ruff_cache
