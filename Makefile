# tokenadmin: `make run` serves the demo, `make test` runs lint, types and every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras installed, named after pyproject.toml's checksum: each installs
# once, and again only when pyproject.toml changes. `run` installs what serving needs;
# `test` adds the test tools.
HASH := $(shell cksum < pyproject.toml | cut -d' ' -f1)
SERVE := $(VENV)/.installed-server-$(HASH)
DEV := $(VENV)/.installed-dev-$(HASH)
# The sync client, generated from the async one (hatch_build.py); never edited by hand.
SYNC := tokenadmin/client/_sync.py
comma := ,

.PHONY: run test lint types pytest bench-dashboard bench clean

define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(1)]'
	find $(VENV) -maxdepth 1 -name '.installed-*' ! -name '*-$(HASH)' -delete
endef

$(SERVE): pyproject.toml
	$(call install,server)
	touch $@

$(DEV): pyproject.toml
	$(call install,server$(comma)dev)
	touch $@ $(SERVE)

# The build hook (hatch_build.py) writes the sync client at every build: rebuilding the
# editable install (the package alone, its dependencies are there) runs it.
$(SYNC): tokenadmin/client/_async.py hatch_build.py | $(SERVE)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: $(SERVE) $(SYNC)
	$(BIN)/tokenadmin migrate
	$(BIN)/tokenadmin demo --if-empty
	$(BIN)/tokenadmin serve

lint: $(DEV) $(SYNC)
	$(BIN)/ruff check tokenadmin tests migrations bench hatch_build.py
	$(BIN)/ruff format --check tokenadmin tests migrations bench hatch_build.py

types: $(DEV) $(SYNC)
	$(BIN)/mypy tokenadmin tests

# The tests in PYTEST_WORKERS processes (pytest-xdist), each with its own databases and
# servers; the tests that load the whole machine share one xdist_group, so they run one after
# another (--dist loadgroup, in pyproject.toml). PYTEST_WORKERS=0 runs them all in this process.
PYTEST_WORKERS ?= 2

pytest: $(DEV) $(SYNC)
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

test: lint types pytest

# The dashboard's user table at 100,000 users (throwaway SQLite and PostgreSQL databases);
# appends its figures to bench/RESULTS.md. Not part of `make test`.
bench-dashboard: $(DEV) $(SYNC)
	$(BIN)/python -m bench.user_table

# Metering (usage, batch, reservations) under load against the limit of each database
# (pgbench; a bare sqlite3 loop), how its cost grows to 100,000 users and 3,000,000 journal
# rows (batches at each), administration at scale, and issue 14's targets beside the
# figures, with exactness checks; needs wrk and pgbench; about twenty minutes. Then the
# gateway's overhead per request against the fake upstream called directly
# (bench/gateway.py, under a minute). Appends its figures to bench/RESULTS.md.
# BENCH_ARGS=--quick for a short run that records nothing.
bench: $(DEV) $(SYNC)
	$(BIN)/python -m bench.metering $(BENCH_ARGS)
	$(BIN)/python -m bench.gateway $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(SYNC)
