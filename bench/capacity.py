"""The capacity model of docs/SCALING.md, measured on this machine: what one fsync, one
PostgreSQL core and one core of tokenadmin each carry of metered events.

`python -m bench.capacity [--seconds 5] [--users 10000]` measures, in about a minute:

- **fsync**: 8 kB written at the start of a file and `fdatasync`ed, in a loop, in a
  temporary file on the filesystem of PostgreSQL's data directory (pg_test_fsync's
  "write, fdatasync" test): how many durable flushes the disk takes per second.
- **PostgreSQL**: on a throwaway database seeded as `make bench` seeds it (10,000 users),
  pgbench (`-M prepared`) runs (1) the smallest durable commit (one row updated) with one
  client and with `--clients` (64), and (2) the bare metered event (`bench.usage.PGBENCH_SCRIPT`:
  the conditional debit of a user and its journal entry, one transaction) with `--clients`, spread
  over the users, with `synchronous_commit` on and off, and all on one user.
- **tokenadmin**: one server process (`uvicorn`, one worker) with `--clients` connections of
  `wrk` and `bench/usage.lua` (POST /v1/usage, a random user each), then batches of 1,000
  events (`bench/batch.lua`, 8 connections).

Each measure sends for `--seconds`, between two readings of the counters (the second
once the load's backends have reported theirs): the events are the growth of the users'
used tokens (or of the probe's rows), exact; the commits are the database's
(`pg_stat_database`); the CPU time is read from /proc, for every backend of the throwaway
database (sampled every 0.1 s while the load runs) and for the server process. So the
per-core figures are CPU time spent per event, which other work on the machine disturbs
less than the rates. WAL flushes and bytes (`pg_stat_wal`, the WAL position) are the
cluster's: other databases' writes at the time count too.
The WAL of one bare event is also read alone, from EXPLAIN (ANALYZE, WAL).

Everything talks to 127.0.0.1 only, is bounded in time and cleaned up (the database is
dropped). The figures are printed as Markdown, with the date, the commit and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bench.data import Seeded, seed_metering
from bench.load import Plan, pgbench, wrk
from bench.usage import PGBENCH_SCRIPT, TOKENS, pgbench_variables, wrk_env
from bench.user_table import _state_of_the_code, _throwaway_database, server
from tokenadmin.migrate import upgrade

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TICKS = os.sysconf("SC_CLK_TCK")
PROBE_SCRIPT = """\
\\set id random(1, 64)
UPDATE capacity_probe SET n = n + 1 WHERE id = :id;
"""
HOT_SCRIPT_USERS = 1  # the "hot" user seeded by bench.data.seed_metering


@dataclass(frozen=True)
class Snapshot:
    events: int
    commits: int
    wal_syncs: int
    wal_lsn: int
    database_cpu: dict[int, float]  # seconds of CPU of each backend of the database
    server_cpu: float


@dataclass(frozen=True)
class Measure:
    name: str
    seconds: float
    events: int
    commits: int
    wal_syncs: int
    wal_bytes: int
    database_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def row(self) -> str:
        per_pg_core = self.events / self.database_cpu if self.database_cpu else 0.0
        per_server_core = self.events / self.server_cpu if self.server_cpu else 0.0
        per_sync = self.events / self.wal_syncs if self.wal_syncs else 0.0
        per_commit = self.events / self.commits if self.commits else 0.0
        wal = self.wal_bytes / self.events if self.events else 0.0
        server = f"{per_server_core:,.0f}" if self.server_cpu else ""
        return (
            f"| {self.name} | {self.rate:,.0f} | {self.database_cpu / self.seconds:.2f}"
            f" | {per_pg_core:,.0f} | {self.server_cpu / self.seconds:.2f} | {server}"
            f" | {per_commit:,.1f} | {per_sync:,.1f} | {wal:,.0f} |"
        )


HEADER = (
    "| what | events/s | PostgreSQL cores busy | events per PostgreSQL core-second"
    " | tokenadmin cores busy | events per tokenadmin core-second | events per commit"
    " | events per WAL flush | WAL bytes per event |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


# --- fsync --------------------------------------------------------------------------------


def fsync_rate(directory: str, seconds: float) -> tuple[int, float, float]:
    """Flushes of 8 kB written at offset 0 (`fdatasync`) in `seconds`: count, mean and p99 ms."""
    block = os.urandom(8192)
    latencies = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="capacity-fsync-") as file:
        descriptor = file.fileno()
        os.pwrite(descriptor, block * 2, 0)
        os.fsync(descriptor)
        deadline = time.perf_counter() + seconds
        while (started := time.perf_counter()) < deadline:
            os.pwrite(descriptor, block, 0)
            os.fdatasync(descriptor)
            latencies.append((time.perf_counter() - started) * 1000)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies), statistics.fmean(latencies), p99


# --- reading the database and the processes -----------------------------------------------


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (uvicorn and its worker)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        total += _cpu_seconds(current) or 0.0
        for task in Path(f"/proc/{current}/task").glob("*"):
            children = task / "children"
            if children.exists():
                pending += [int(child) for child in children.read_text().split()]
    return total


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class Observer:
    """Reads the counters of one database from a connection to another one (the admin
    database), so that its own reads are not the database's commits."""

    def __init__(self, admin_url: str, database: str, events_sql: str) -> None:
        self.admin_url = admin_url
        self.database = database
        self.events_sql = events_sql
        self.database_url = admin_url.rsplit("/", 1)[0] + f"/{database}"

    async def snapshot(self, server_pid: int | None) -> Snapshot:
        admin = await asyncpg.connect(self.admin_url, timeout=10)
        target = await asyncpg.connect(self.database_url, timeout=10)
        try:
            commits = await admin.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", self.database
            )
            wal_syncs = await admin.fetchval("SELECT wal_sync FROM pg_stat_wal")
            lsn = await admin.fetchval("SELECT pg_current_wal_lsn()::text")
            pids = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> $2",
                self.database,
                await target.fetchval("SELECT pg_backend_pid()"),
            )
            events = await target.fetchval(self.events_sql)
        finally:
            await target.close()
            await admin.close()
        cpu = {row["pid"]: _cpu_seconds(row["pid"]) for row in pids}
        return Snapshot(
            int(events or 0),
            int(commits),
            int(wal_syncs),
            _lsn(lsn),
            {pid: seconds for pid, seconds in cpu.items() if seconds is not None},
            _tree_cpu(server_pid) if server_pid else 0.0,
        )


def _between(name: str, seconds: float, first: Snapshot, last: Snapshot) -> Measure:
    # A backend that started after the first snapshot counts from 0.
    database_cpu = sum(
        cpu - first.database_cpu.get(pid, 0.0) for pid, cpu in last.database_cpu.items()
    )
    return Measure(
        name,
        seconds,
        last.events - first.events,
        # The observer's two statements in the database (the first snapshot's) are commits.
        last.commits - first.commits - 2,
        last.wal_syncs - first.wal_syncs,
        last.wal_lsn - first.wal_lsn,
        database_cpu,
        last.server_cpu - first.server_cpu,
    )


SETTLE = 2.0
"""Seconds to wait after a load for its backends to report their statistics (PostgreSQL
flushes a backend's counters when it ends, or once it has been idle a second)."""


def observed(
    name: str,
    observer: Observer,
    load: Callable[[], Any],
    seconds: float,
    server_pid: int | None = None,
) -> Measure:
    """Run `load` (which sends for `seconds`) between two snapshots; the CPU time of the
    database's backends is sampled while it runs, since pgbench's end as it leaves."""
    first = asyncio.run(observer.snapshot(server_pid))
    cpu: dict[int, float] = dict(first.database_cpu)
    done = threading.Event()

    async def sample() -> None:
        connection = await asyncpg.connect(observer.admin_url, timeout=10)
        try:
            while not done.is_set():
                rows = await connection.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", observer.database
                )
                for row in rows:
                    seconds_used = _cpu_seconds(row["pid"])
                    if seconds_used is not None:
                        cpu[row["pid"]] = seconds_used
                await asyncio.sleep(0.1)
        finally:
            await connection.close()

    sampler = threading.Thread(target=lambda: asyncio.run(sample()))
    sampler.start()
    try:
        load()
    finally:
        done.set()
        sampler.join()
    time.sleep(SETTLE)
    last = asyncio.run(observer.snapshot(server_pid))
    # Backends gone by now (pgbench's) keep their last sampled CPU time.
    measure = _between(
        name, seconds, first, replace(last, database_cpu={**cpu, **last.database_cpu})
    )
    print(measure.row(), flush=True)
    return measure


# --- the measures -------------------------------------------------------------------------


async def _prepare_probe(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(
            "CREATE TABLE capacity_probe (id int PRIMARY KEY, n bigint NOT NULL)"
            " WITH (fillfactor = 50);"
            " INSERT INTO capacity_probe SELECT g, 0 FROM generate_series(1, 64) AS g"
        )
    finally:
        await connection.close()


async def debit_wal_bytes(seeded: Seeded, samples: int = 20) -> float:
    """The WAL bytes of one bare metered event's statement alone (EXPLAIN (ANALYZE, WAL)),
    the commit record aside, averaged over `samples` users."""
    variables = pgbench_variables(seeded, "user", 10_000)
    statement = PGBENCH_SCRIPT.split("BEGIN;", 1)[1].rsplit("END;", 1)[0]
    statement = statement.replace(":tokens::bigint", "1::bigint")
    statement = statement.replace(":org::uuid", f"'{variables['org']}'::uuid")
    statement = statement.replace(":actor::text", f"'{variables['actor']}'::text")
    statement = statement.replace(":prefix::text", f"'{variables['prefix']}'::text")
    connection = await asyncpg.connect(seeded.url, timeout=10)
    wal = []
    try:
        for n in range(samples):
            sql = statement.replace(":n::int", f"{n}::int").strip().rstrip(";")
            async with connection.transaction():
                plan = await connection.fetchval(f"EXPLAIN (ANALYZE, WAL, FORMAT JSON) {sql}")
            top = json.loads(plan)[0]["Plan"]
            wal.append(float(top.get("WAL Bytes", 0)))
    finally:
        await connection.close()
    return statistics.fmean(wal)


async def bytes_per_row(url: str) -> dict[str, tuple[int, float, float]]:
    """Rows, and bytes per row of the table and of its indexes, of the tables that grow
    with every metered event (on the throwaway database, after the measures)."""
    connection = await asyncpg.connect(url, timeout=10)
    sizes = {}
    try:
        await connection.execute("ANALYZE journal_entries, idempotency_records, users")
        for table in ("journal_entries", "idempotency_records", "users"):
            rows = await connection.fetchval(f"SELECT count(*) FROM {table}")
            heap = await connection.fetchval("SELECT pg_table_size($1::regclass)", table)
            indexes = await connection.fetchval("SELECT pg_indexes_size($1::regclass)", table)
            sizes[table] = (rows, heap / max(rows, 1), indexes / max(rows, 1))
    finally:
        await connection.close()
    return sizes


def _pgbench_load(
    url: str, script: str, variables: dict[str, object], clients: int, seconds: float, work: Path
) -> Callable[[], Any]:
    return lambda: pgbench(
        url, script, variables, clients=clients, threads=2, seconds=seconds, workdir=work
    )


def _used(prefix: str) -> str:
    return f"SELECT sum(inference_used) FROM users WHERE email LIKE '{prefix}%'"


def measure_postgresql(
    admin_url: str, url: str, seeded: Seeded, seconds: float, users: int, clients: int, work: Path
) -> list[Measure]:
    database = url.rsplit("/", 1)[1]
    probe = Observer(admin_url, database, "SELECT sum(n) FROM capacity_probe")
    spread = Observer(admin_url, database, _used("user"))
    hot = Observer(admin_url, database, _used("hot"))
    spread_variables = pgbench_variables(seeded, "user", users)
    hot_variables = pgbench_variables(seeded, "hot", HOT_SCRIPT_USERS)
    measures = []
    for count in (1, clients):
        load = _pgbench_load(url, PROBE_SCRIPT, {}, count, seconds, work)
        name = f"smallest durable commit (one row), pgbench, {count} client{'s' * (count > 1)}"
        measures.append(observed(name, probe, load, seconds))
    load = _pgbench_load(url, PGBENCH_SCRIPT, spread_variables, clients, seconds, work)
    name = f"bare metered event (debit + journal entry), pgbench, {clients} clients, spread"
    measures.append(observed(name, spread, load, seconds))
    os.environ["PGOPTIONS"] = "-c synchronous_commit=off"
    try:
        load = _pgbench_load(url, PGBENCH_SCRIPT, spread_variables, clients, seconds, work)
        name = "the same, synchronous_commit off (not durable: the CPU ceiling)"
        measures.append(observed(name, spread, load, seconds))
    finally:
        del os.environ["PGOPTIONS"]
    load = _pgbench_load(url, PGBENCH_SCRIPT, hot_variables, clients, seconds, work)
    name = f"bare metered event, pgbench, {clients} clients, one user (its row lock)"
    measures.append(observed(name, hot, load, seconds))
    return measures


def measure_tokenadmin(
    admin_url: str, url: str, seeded: Seeded, seconds: float, users: int, clients: int
) -> list[Measure]:
    database = url.rsplit("/", 1)[1]
    spread = Observer(admin_url, database, _used("user"))
    plan = Plan(users=users, seconds=seconds, connections=clients, threads=2, timeout=20.0)
    env = wrk_env(seeded, "user", users, TOKENS)
    measures = []
    with server(url, 1) as (base, pid):

        def usage(duration: float) -> Any:
            return wrk(
                base,
                "usage.lua",
                env,
                seconds=duration,
                timeout=20.0,
                threads=2,
                connections=clients,
            )

        usage(1.0)  # warm-up
        name = f"POST /v1/usage, 1 tokenadmin process, {clients} connections, spread"
        measures.append(observed(name, spread, lambda: usage(seconds), seconds, pid))

        def batches() -> Any:
            batch_env = {**env, "BENCH_EVENTS": str(plan.batch_events)}
            return wrk(
                base, "batch.lua", batch_env, seconds=seconds, timeout=20.0, threads=2,
                connections=plan.batch_connections,
            )  # fmt: skip

        name = "POST /v1/usage/batch (1,000 events), 1 tokenadmin process, 8 connections"
        measures.append(observed(name, spread, batches, seconds, pid))
    return measures


# --- the command --------------------------------------------------------------------------


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measure (3 to 30)")
    parser.add_argument(
        "--clients", type=int, default=64, help="pgbench clients and wrk connections (8 to 64)"
    )
    parser.add_argument("--users", type=int, default=10_000, help="seeded users (100 to 100,000)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an administrator's URL of the PostgreSQL server on this machine",
    )
    parser.add_argument(
        "--code",
        default=None,
        help="the commit measured, when run from an export of it (default: git's HEAD here)",
    )
    parser.add_argument("--skip-api", action="store_true", help="PostgreSQL and fsync only")
    options = parser.parse_args()
    if not 3 <= options.seconds <= 30 or not 100 <= options.users <= 100_000:
        parser.error("--seconds is 3 to 30 and --users 100 to 100,000")
    if not 8 <= options.clients <= 64:
        parser.error("--clients is 8 to 64")
    host = urlsplit(options.postgres_url.replace("+asyncpg", "")).hostname
    if host not in LOOPBACK:
        parser.error(f"the PostgreSQL server must be on this machine (127.0.0.1), not {host}")
    return options


async def _data_directory(admin_url: str) -> str:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        return str(await connection.fetchval("SHOW data_directory"))
    finally:
        await connection.close()


def _fsync_directory(data_directory: str) -> str:
    """A temporary directory on the filesystem of the data directory (the WAL's disk)."""
    scratch = tempfile.gettempdir()
    try:
        if os.stat(data_directory).st_dev != os.stat(scratch).st_dev:
            return data_directory if os.access(data_directory, os.W_OK) else scratch
    except OSError:
        pass
    return scratch


def main() -> None:
    options = _options()
    admin_url = options.postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    print(
        f"## Capacity: {started:%Y-%m-%d %H:%M} UTC, commit {options.code or _state_of_the_code()},"
        f" {os.cpu_count()} cores\n",
        flush=True,
    )
    data_directory = asyncio.run(_data_directory(admin_url))
    directory = _fsync_directory(data_directory)
    count, mean, p99 = fsync_rate(directory, options.seconds)
    print(
        f"fsync (8 kB written at offset 0, fdatasync, in {directory}; PostgreSQL's data"
        f" directory is {data_directory}): {count / options.seconds:,.0f} flushes/s,"
        f" mean {mean:.2f} ms, p99 {p99:.2f} ms\n",
        flush=True,
    )
    print(HEADER, flush=True)
    with (
        _throwaway_database("postgresql", admin_url) as url,
        tempfile.TemporaryDirectory(prefix="capacity-") as work,
    ):
        upgrade(url)
        seeded = seed_metering(url, options.users)
        asyncio.run(_prepare_probe(url))
        measure_postgresql(
            admin_url, url, seeded, options.seconds, options.users, options.clients, Path(work)
        )
        if not options.skip_api:
            measure_tokenadmin(
                admin_url, url, seeded, options.seconds, options.users, options.clients
            )
        wal = asyncio.run(debit_wal_bytes(seeded))
        sizes = asyncio.run(bytes_per_row(url))
    print(
        f"\nWAL of one bare metered event's statement alone (EXPLAIN (ANALYZE, WAL), 20"
        f" users): {wal:,.0f} bytes, the commit record aside. Load average (1 min) at the"
        f" start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        flush=True,
    )
    print("\nSize per row after the measures (table; its indexes), bytes:")
    for table, (rows, heap, indexes) in sizes.items():
        print(f"- {table}: {rows:,} rows, {heap:,.0f}; {indexes:,.0f}")


if __name__ == "__main__":
    main()
