"""The benchmark's own functions with tiny numbers, so `make bench` can't rot.

Needs `wrk` (and `pgbench` for the PostgreSQL part); skipped without them. `.ci/run`
installs wrk.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from bench import admin, batch, growth, load, metering, pgstats, reservations, targets, usage
from bench.data import Trace, seal, seed_metering, verify
from bench.figures import reconcile
from bench.load import Plan
from bench.user_table import _throwaway_database, server
from tests.servers import WHOLE_MACHINE
from tokenadmin.migrate import upgrade

POSTGRES_ADMIN_URL = os.environ.get(
    "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TINY = Plan(
    users=200,
    seconds=1.0,
    connections=8,
    threads=1,
    timeout=10.0,
    warmup=0.0,
    batch_connections=2,
    batch_events=50,
    scenarios=("spread", "over-demand", "batch", "reservations", "binding"),
)
TINY_SIZES = growth.Sizes(
    users=(50, 100),
    journal_rows=(6_000,),
    seconds=1.0,
    batch_seconds=1.0,
    batch_rounds=2,
    query_requests=3,
    connections=8,
    timeout=10.0,
    warmup=0.0,
    batch_connections=2,
    batch_events=50,
)
TINY_SCALE = admin.Scale(changed_users=20, new_users=50, import_on=("sqlite",))

pytestmark = [pytest.mark.slow, WHOLE_MACHINE]


def _needs(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool}; .ci/run installs it)")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    _needs("pgbench")
    try:
        with _throwaway_database("postgresql", POSTGRES_ADMIN_URL) as url:
            upgrade(url)
            yield url
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if os.environ.get("TOKENADMIN_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable ({error})")


def test_a_batch_committed_but_unanswered_is_counted_as_such_not_as_inexact() -> None:
    def check(grew: int, recorded: int, journal: int, unanswered: int) -> tuple[bool, str]:
        kept = Trace({200: recorded, 402: 5}, {"usage": journal})
        return reconcile(
            grew, 1, 16_000, kept, statuses=(200,), actions=("usage",),
            unanswered=unanswered, per_request=1_000,
        )  # fmt: skip

    exact, text = check(17_000, 17_000, 17_000, 1)
    assert exact
    assert "(16,000 accepted + 1,000 committed but unanswered) × 1" in text
    assert not check(17_000, 16_000, 17_000, 1)[0]  # a debit without its record
    assert not check(17_000, 17_000, 16_000, 1)[0]  # a debit without its journal entry
    assert not check(17_000, 17_000, 17_000, 0)[0]  # more committed than was unanswered
    assert not check(18_000, 17_000, 17_000, 1)[0]  # counted twice


def test_metering_on_sqlite_is_exact_under_load() -> None:
    _needs("wrk")
    run = metering.run_database("sqlite", TINY, POSTGRES_ADMIN_URL)

    assert run.verify_clean, run.verify_summary
    systems = {(r.scenario, r.system.split(",")[0]): r for r in run.results}
    assert set(systems) == {
        ("spread", "limit: sqlite3 loop"),
        ("reservations", "limit: sqlite3 loop"),
        ("spread", "tokenadmin API"),
        ("over-demand", "tokenadmin API"),
        ("batch", "tokenadmin API"),
        ("reservations", "tokenadmin API"),
        ("binding", "tokenadmin API"),
    }
    for result in run.results:
        assert result.per_second > 0, result
        assert result.accepted > 0, result
        assert result.exact, (result.exactness, result.notes)
    api = systems[("spread", "tokenadmin API")]
    assert api.memory is not None
    assert min(api.memory.rss) > 10
    assert "= allowance" in systems[("over-demand", "tokenadmin API")].exactness
    assert systems[("batch", "tokenadmin API")].unit == "events"
    assert "0 open reservations" in systems[("reservations", "tokenadmin API")].exactness
    assert "× the spread scenario's rate" in systems[("binding", "tokenadmin API")].notes[-1]
    lines = metering.table([run])
    assert lines[2].startswith("| sqlite | spread | limit")
    assert "≥ 15,000 events/s" in next(line for line in lines if "| batch |" in line)


def test_pgbench_limits_debit_and_reserve_exactly_and_keep_the_journal_clean(
    postgres_url: str,
) -> None:
    seeded = seed_metering(postgres_url, TINY.users)
    with tempfile.TemporaryDirectory() as scratch:
        spread = usage.pgbench_limit(
            seeded, "spread", TINY, Path(scratch), prefix="user", users=TINY.users
        )
        pairs = reservations.pgbench_limit(seeded, TINY, Path(scratch))
    sealed = seal(postgres_url)  # the limits' bare entries, chained as the service would
    added = growth.add_history(postgres_url, 1_000, TINY.users)
    clean, summary = verify(postgres_url)

    for result in (spread, pairs):
        assert result.accepted > 0
        assert result.per_second > 0
        assert result.exact, result.exactness
        assert 0 < result.p50_ms <= result.p99_ms
    assert "0 open reservations" in pairs.exactness
    assert sealed == spread.accepted + 2 * pairs.accepted
    assert added == 1_000
    assert clean, summary


def test_postgres_counters_show_the_wal_and_the_pages_a_load_read(postgres_url: str) -> None:
    seed_metering(postgres_url, TINY.users)
    before = pgstats.counters(postgres_url)
    added = growth.add_history(postgres_url, 2_000, TINY.users)  # its backend exits: reported
    after = before
    for _ in range(100):  # until the exited backend's statistics are in
        after = pgstats.counters(postgres_url)
        if after.reads["journal_entries"][0] > before.reads["journal_entries"][0]:
            break
        time.sleep(0.1)
    said = pgstats.describe(before, after, added)

    assert after.wal_bytes - before.wal_bytes > added * 100  # an entry and its record
    assert after.reads["users"][1] > 0  # sizes too
    assert said.startswith(f"PostgreSQL (shared_buffers {after.shared_buffers}) per event: WAL ")
    assert "pages read into shared buffers: " in said
    assert "journal_entries" in said.split("pages read into shared buffers: ")[1]
    assert pgstats.describe(after, after, 0).endswith("pages read into shared buffers: none")


def test_the_connections_are_counted_per_server_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'split.db'}"
    upgrade(url)
    with server(url, 2) as (base, pid):
        port = int(base.rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
        try:
            split: list[int] = []
            for _ in range(200):  # until the workers have accepted all six
                split = load.connection_split(pid, port)
                if sum(split) == len(clients):
                    break
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()

    assert len(split) == 2  # uvicorn's two workers, not its supervisor
    assert sum(split) == 6
    assert split == sorted(split, reverse=True)
    assert batch._split_note([[5, 1]]) == ["connections per server process halfway: 5 + 1"]
    assert batch._split_note([[6]]) == []  # one process: nothing to say


def test_growth_and_administration_on_sqlite_are_measured_and_verified() -> None:
    _needs("wrk")
    run = growth.run_database("sqlite", TINY_SIZES, TINY_SCALE, POSTGRES_ADMIN_URL)

    points = run.growth.points
    assert [p.users for p in points] == [50, 100, 100]
    assert points[2].journal_entries >= 6_000 > points[1].journal_entries
    assert [p.batch is not None for p in points] == [False, True, True]
    assert [len(p.batch_rounds) for p in points] == [0, 2, 2]
    for point in points[1:]:
        assert point.batch is not None
        slower = min(point.batch_rounds, key=lambda result: result.per_second)
        assert point.batch.per_second == slower.per_second  # of two, the slower
        assert any(note.startswith("median of 2 rounds") for note in point.batch.notes)
    for point in points:
        assert point.limit.exact, point.limit.exactness
        assert point.api.exact, (point.api.exactness, point.api.notes)
        assert point.batch is None or point.batch.exact, (point.batch.exactness, point.batch.notes)
        assert 0 < point.query_p50_ms <= point.query_p99_ms
    assert growth.flatness(run.growth) is not None
    steps = {step.how: step for step in run.admin.steps}
    for step in steps.values():
        assert step.ok, step
        assert step.seconds > 0
    assert "50 users created" in steps["tokenadmin users import (CSV)"].detail
    assert "20 changes applied" in steps["POST /v1/organizations/{id}/allowances"].detail
    assert run.clean
    growth_lines = growth.table([run.growth])
    assert len(growth_lines) == 2 + 3 * len(points) + 2  # and the batches of two sizes
    assert admin.table([run.admin])[2].startswith("| sqlite | allowance change of 20 users")
    rows = targets.rows({}, {"sqlite": run}, TINY_SIZES.connections)
    figures = {row.figure: row for row in rows}
    assert figures["batch as the journal grows"].met is not None
    assert figures["verify per 1,000,000 entries"].met is not None
    assert figures["allowance change of 20 users"].met is not None
    assert figures["batch, events/s"].met is None  # the metering part did not run
