# tokenadmin: `make run` serves the demo, `make test` runs lint, types and every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint types pytest bench-dashboard bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tokenadmin migrate
	$(BIN)/tokenadmin demo --if-empty
	$(BIN)/tokenadmin serve

lint: $(STAMP)
	$(BIN)/ruff check tokenadmin tests migrations bench
	$(BIN)/ruff format --check tokenadmin tests migrations bench

types: $(STAMP)
	$(BIN)/mypy tokenadmin tests

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint types pytest

# The dashboard's user table at 100,000 users (throwaway SQLite and PostgreSQL databases);
# appends its figures to bench/RESULTS.md. Not part of `make test`.
bench-dashboard: $(STAMP)
	$(BIN)/python -m bench.user_table

# Metering (usage, batch, reservations) under load against the limit of each database
# (pgbench; a bare sqlite3 loop), how its cost grows to 100,000 users and 1,000,000 journal
# entries, and administration at scale, with exactness checks; needs wrk and pgbench; under
# ten minutes. Appends its figures to bench/RESULTS.md. BENCH_ARGS=--quick for a short run
# that records nothing.
bench: $(STAMP)
	$(BIN)/python -m bench.metering $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
