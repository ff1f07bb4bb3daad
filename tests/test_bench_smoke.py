"""The metering benchmark's own functions with tiny numbers, so `make bench` can't rot.

Needs `wrk` (and `pgbench` for the PostgreSQL part); skipped without them. `.ci/run`
would have to `apt-get install wrk` for these to run in CI.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from bench import metering
from bench.user_table import _throwaway_database
from tokenadmin.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TINY = metering.Plan(
    users=200,
    seconds=1.0,
    connections=8,
    threads=1,
    drain=1.0,
    warmup=0.0,
    scenarios=("spread", "over-demand"),
)

pytestmark = pytest.mark.slow


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool}; .ci/run installs it)")


def test_metering_on_sqlite_is_exact_under_load() -> None:
    _needs("wrk")
    run = metering.run_database("sqlite", TINY, POSTGRES_ADMIN_URL)

    assert run.verify_clean, run.verify_summary
    systems = {(r.scenario, r.system.split(",")[0]): r for r in run.results}
    assert set(systems) == {
        ("spread", "limit: sqlite3 loop"),
        ("spread", "tokenadmin API"),
        ("over-demand", "tokenadmin API"),
    }
    for result in run.results:
        assert result.per_second > 0, result
        assert result.accepted > 0, result
        assert result.exact, (result.exactness, result.notes)
    api = systems[("spread", "tokenadmin API")]
    assert api.rss_mb is not None
    assert api.rss_mb > 10
    over = systems[("over-demand", "tokenadmin API")]
    assert "= allowance" in over.exactness
    assert metering.table([run])[2].startswith("| sqlite | spread | limit")


def test_pgbench_limit_debits_exactly_and_keeps_the_journal_clean() -> None:
    _needs("pgbench")
    try:
        with _throwaway_database("postgresql", POSTGRES_ADMIN_URL) as url:
            upgrade(url)
            seeded = asyncio.run(metering._seed(url, TINY.users))
            with tempfile.TemporaryDirectory() as scratch:
                result = metering.pgbench_limit(
                    seeded, "spread", TINY, Path(scratch), prefix="user", users=TINY.users
                )
            clean, summary = metering.verify(url)
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if os.environ.get("TOKENADMIN_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable ({error})")

    assert result.accepted > 0
    assert result.per_second > 0
    assert result.exact, result.exactness
    assert 0 < result.p50_ms <= result.p99_ms
    assert clean, summary
