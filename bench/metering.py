"""Benchmark: metering (POST /v1/usage) under load, against the limit of the database.

    .venv/bin/python -m bench.metering [--quick] [--databases postgresql,sqlite]
                                       [--users 10000] [--seconds 10] [--no-record]

For each database it makes a throwaway one (a PostgreSQL database it creates and drops; a
SQLite file in a temporary directory), seeds one organization with `bulk.seed_users` and
an API key with the `usage` scope, and measures each scenario twice on the same data:

- the limit: the work one metered request must do, and nothing else, in the project's
  schema — the conditional debit of the user's row (found by email, as the API finds it)
  and its journal entry, one transaction per debit. On PostgreSQL with `pgbench` (same
  number of clients, `-M prepared`); on SQLite with a bare `sqlite3` loop in one process
  (WAL, synchronous=FULL, as the service opens it).
- tokenadmin: a real server process (`uvicorn --workers 2` on PostgreSQL, one process on
  SQLite) driven by `wrk` with bench/usage.lua, real POST /v1/usage requests.

Scenarios: "spread" (a random one of the seeded users per request), "hot" (one user for
every connection) and "over-demand" (one user whose allowance runs out mid-run; the API
only: accepted tokens must equal the allowance exactly).

After each run it checks exactness: the tokens used in the database grew by exactly the
accepted requests times their tokens; after each database, `tokenadmin verify` is clean.
Everything is on loopback, bounded in time, and cleaned up even on failure. Results are
appended to bench/RESULTS.md (not with --quick or --no-record).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bench.user_table import (
    RESULTS,
    _percentile,
    _state_of_the_code,
    _throwaway_database,
    server,
)
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.bulk import EMAIL_DOMAIN, seed_users
from tokenadmin.database import Database
from tokenadmin.migrate import upgrade
from tokenadmin.organization import service as organization_service

HERE = Path(__file__).resolve().parent
USAGE_LUA = HERE / "usage.lua"
KEY_NAME = "bench"  # the journal's actor is "key:bench", as the API writes it
SPREAD_MAX_TOKENS = 10_000_000  # never refused in a run
HOT_MAX_TOKENS = 1_000_000_000_000
SCENARIOS = ("spread", "hot", "over-demand")

# What one metered request must do, and nothing else: the conditional debit and its
# journal entry (the columns `journal.service.record` fills for a usage), one transaction.
# One statement, so it is also the fewest round trips the work can take. (pgbench reads
# any ":name" as a variable, even in a literal: the actor comes in as one.)
PGBENCH_SCRIPT = f"""\
\\set n random(0, :users - 1)
BEGIN;
WITH debit AS (
  UPDATE users SET inference_used = inference_used + :tokens::bigint, last_activity_at = now()
   WHERE org_id = :org::uuid
     AND email = :prefix::text || lpad(:n::int::text, 6, '0') || '@{EMAIL_DOMAIN}'
     AND inference_used + inference_reserved + :tokens::bigint <= max_tokens
  RETURNING id, max_tokens, inference_used, inference_reserved
)
INSERT INTO journal_entries (org_id, user_id, created_at, actor, action, kind, amount,
    capacity_delta, allocated_delta, allowance_delta, used_delta, reserved_delta,
    allowance_after, used_after, reserved_after, details)
SELECT :org::uuid, id, now(), :actor::text, 'usage', 'inference', :tokens::bigint,
    0, 0, 0, :tokens::bigint, 0, max_tokens, inference_used, inference_reserved,
    '{{"model": "bench"}}'
  FROM debit;
END;
"""

SQLITE_DEBIT = """
UPDATE users SET inference_used = inference_used + ?, last_activity_at = ?
 WHERE org_id = ? AND email = ? AND inference_used + inference_reserved + ? <= max_tokens
 RETURNING id, max_tokens, inference_used, inference_reserved
"""
SQLITE_ENTRY = """
INSERT INTO journal_entries (org_id, user_id, created_at, actor, action, kind, amount,
    capacity_delta, allocated_delta, allowance_delta, used_delta, reserved_delta,
    allowance_after, used_after, reserved_after, details)
VALUES (?, ?, ?, ?, 'usage', 'inference', ?, 0, 0, 0, ?, 0, ?, ?, ?, '{"model": "bench"}')
"""


@dataclass(frozen=True)
class Plan:
    """How big and how long: the defaults are the recorded run."""

    users: int = 10_000
    seconds: float = 10.0
    connections: int = 64
    threads: int = 2
    drain: float = 3.0  # extra wrk time so requests in flight at the end are answered
    warmup: float = 1.0
    postgres_workers: int = 2
    scenarios: tuple[str, ...] = SCENARIOS


@dataclass
class Result:
    database: str
    scenario: str
    system: str
    answered: int  # requests (or transactions) answered in the measured time
    accepted: int
    seconds: float
    p50_ms: float
    p99_ms: float
    exact: bool
    exactness: str
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


@dataclass
class DatabaseRun:
    database: str
    results: list[Result]
    verify_clean: bool
    verify_summary: str
    seed_seconds: float


@dataclass(frozen=True)
class Seeded:
    url: str
    org_id: uuid.UUID
    key: str
    minimum: int


# --- the data -----------------------------------------------------------------------------


async def _seed(url: str, users: int) -> Seeded:
    db = Database(url, pool_size=2)
    act = Act("bench", datetime.now(UTC))
    try:

        async def organization(session: AsyncSession) -> tuple[uuid.UUID, int]:
            org = await organization_service.create(session, act, name="Bench Metering")
            await organization_service.record_purchase(
                session,
                act,
                org,
                inference_amount=users * SPREAD_MAX_TOKENS + 2 * HOT_MAX_TOKENS,
                training_amount=0,
                purchased_on=None,
                expires_at=None,
                payer="bench",
                note="capacity for the metering benchmark",
            )
            return org.id, org.min_inference

        async def key(session: AsyncSession) -> str:
            _, secret = await api_key_service.create(
                session, act, org_id=org_id, name=KEY_NAME, scopes=["usage"]
            )
            return secret

        org_id, minimum = await db.write(organization)
        secret = await db.write(key)
        await seed_users(db, org_id, users, max_tokens=SPREAD_MAX_TOKENS, prefix="user", act=act)
        await seed_users(db, org_id, 1, max_tokens=HOT_MAX_TOKENS, prefix="hot", act=act)
        return Seeded(url, org_id, secret, minimum)
    finally:
        await db.dispose()


async def _add_user(url: str, org_id: uuid.UUID, prefix: str, max_tokens: int) -> None:
    db = Database(url, pool_size=1)
    try:
        await seed_users(db, org_id, 1, max_tokens=max_tokens, prefix=prefix)
    finally:
        await db.dispose()


async def _used(url: str, prefix: str) -> int:
    """Tokens used by the seeded users with this prefix."""
    db = Database(url, pool_size=1)
    try:

        async def work(session: AsyncSession) -> int:
            total = await session.scalar(
                text("SELECT coalesce(sum(inference_used), 0) FROM users WHERE email LIKE :p"),
                {"p": f"{prefix}%@{EMAIL_DOMAIN}"},
            )
            return int(total or 0)

        return await db.read(work)
    finally:
        await db.dispose()


def used(url: str, prefix: str) -> int:
    return asyncio.run(_used(url, prefix))


def verify(url: str) -> tuple[bool, str]:
    """`tokenadmin verify --json` on the database: clean, and what it replayed."""
    command = [str(Path(sys.executable).parent / "tokenadmin"), "verify", "--json"]
    env = {**os.environ, "TOKENADMIN_DATABASE_URL": url}
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(answer.stdout)
    except json.JSONDecodeError:
        return False, f"verify exited {answer.returncode}: {answer.stderr[-500:]}"
    summary = (
        f"{report['entries']:,} entries, {report['users']:,} users,"
        f" {len(report['differences'])} differences"
    )
    return bool(report["clean"]), summary


# --- the limit ----------------------------------------------------------------------------


def _exactness(before: int, after: int, accepted: int, tokens: int) -> tuple[bool, str]:
    expected = accepted * tokens
    grew = after - before
    if grew == expected:
        return True, f"used grew {grew:,} = {accepted:,} accepted × {tokens}"
    return False, f"used grew {grew:,} but {accepted:,} accepted × {tokens} = {expected:,}"


def pgbench_limit(
    seeded: Seeded, scenario: str, plan: Plan, workdir: Path, *, prefix: str, users: int
) -> Result:
    """pgbench running the bare debit + journal entry, `plan.connections` clients."""
    tokens = 1
    script = workdir / "metering.pgbench"
    script.write_text(PGBENCH_SCRIPT)
    logs = workdir / f"pgbench-{scenario}"
    logs.mkdir()
    before = used(seeded.url, prefix)
    command = [
        "pgbench", "--no-vacuum", "-M", "prepared",
        "-c", str(plan.connections), "-j", str(plan.threads), "-T", str(math.ceil(plan.seconds)),
        "-f", str(script), "-D", f"org={seeded.org_id}", "-D", f"prefix={prefix}",
        "-D", f"users={users}", "-D", f"tokens={tokens}", "-D", f"actor=key:{KEY_NAME}",
        "-l", "--log-prefix", str(logs / "tx"), seeded.url,
    ]  # fmt: skip
    answer = subprocess.run(
        command, capture_output=True, text=True, timeout=plan.seconds + 120, cwd=workdir
    )
    if answer.returncode != 0:
        raise RuntimeError(f"pgbench failed: {answer.stderr[-1500:]}")
    output = answer.stdout
    processed = int(_field(r"number of transactions actually processed: (\d+)", output))
    tps = float(_field(r"tps = ([\d.]+) \(without initial connection time\)", output))
    latencies: list[float] = []
    failed = 0
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                latencies.append(int(parts[2]) / 1000)
            else:
                failed += 1
    latencies.sort()
    after = used(seeded.url, prefix)
    exact, exactness = _exactness(before, after, processed, tokens)
    if failed:
        exact, exactness = False, f"{failed} failed transactions; " + exactness
    return Result(
        "postgresql",
        scenario,
        "limit: pgbench",
        processed,
        processed,
        processed / tps if tps else plan.seconds,
        statistics.median(latencies),
        _percentile(latencies, 0.99),
        exact,
        exactness,
    )


def _field(pattern: str, output: str) -> str:
    match = re.search(pattern, output)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in pgbench's output:\n{output}")
    return match.group(1)


def sqlite_limit(seeded: Seeded, scenario: str, plan: Plan, *, prefix: str, users: int) -> Result:
    """A bare sqlite3 loop doing the debit + journal entry, one transaction each."""
    tokens = 1
    path = seeded.url.removeprefix("sqlite:///")
    before = used(seeded.url, prefix)
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        org = seeded.org_id.hex  # SQLite stores Uuid as CHAR(32)
        emails = [f"{prefix}{index:06d}@{EMAIL_DOMAIN}" for index in range(users)]
        pick = random.Random(7).choice
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + plan.seconds
        while (now := time.perf_counter()) < deadline:
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
            connection.execute("BEGIN IMMEDIATE")
            row = connection.execute(
                SQLITE_DEBIT, (tokens, stamp, org, pick(emails), tokens)
            ).fetchone()
            if row is None:
                raise RuntimeError("the bare debit was refused; the allowances are too small")
            user_id = row[0]  # then the allowance, used and reserved after
            connection.execute(
                SQLITE_ENTRY,
                (org, user_id, stamp, f"key:{KEY_NAME}", tokens, tokens, *row[1:]),
            )
            connection.execute("COMMIT")
            latencies.append((time.perf_counter() - now) * 1000)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    latencies.sort()
    exact, exactness = _exactness(before, used(seeded.url, prefix), len(latencies), tokens)
    return Result(
        "sqlite",
        scenario,
        "limit: sqlite3 loop, 1 connection",
        len(latencies),
        len(latencies),
        elapsed,
        statistics.median(latencies),
        _percentile(latencies, 0.99),
        exact,
        exactness,
    )


# --- tokenadmin ---------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def server_memory(pid: int) -> tuple[float, float]:
    """RSS and peak RSS (VmHWM) of the server and its worker processes, summed, in MB."""
    rss = peak = 0
    for process in _descendants(pid):
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss += int(fields.get("VmRSS", "0 kB").split()[0])
        peak += int(fields.get("VmHWM", "0 kB").split()[0])
    return rss / 1024, peak / 1024


def wrk(
    base: str,
    seeded: Seeded,
    plan: Plan,
    *,
    prefix: str,
    users: int,
    tokens: int,
    seconds: float,
) -> dict[str, Any]:
    """wrk with bench/usage.lua for `seconds`; the counts and latencies it printed."""
    env = {
        **os.environ,
        "BENCH_KEY": seeded.key,
        "BENCH_PREFIX": prefix,
        "BENCH_FIRST": "0",
        "BENCH_USERS": str(users),
        "BENCH_TOKENS": str(tokens),
        "BENCH_RUN": uuid.uuid4().hex[:12],
        "BENCH_SECONDS": str(seconds),
    }
    command = [
        "wrk", f"-t{plan.threads}", f"-c{plan.connections}",
        f"-d{math.ceil(seconds + plan.drain)}s", "--timeout", "30s",
        "-s", str(USAGE_LUA), base,
    ]  # fmt: skip
    answer = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + plan.drain + 60
    )
    line = next((x for x in answer.stdout.splitlines() if x.startswith("BENCH ")), None)
    if answer.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({answer.returncode}): {answer.stdout}{answer.stderr}")
    figures: dict[str, Any] = json.loads(line.removeprefix("BENCH "))
    figures["stderr"] = answer.stderr.strip()
    return figures


def api_run(
    seeded: Seeded,
    database: str,
    scenario: str,
    plan: Plan,
    base: str,
    pid: int,
    *,
    prefix: str,
    users: int,
    tokens: int,
    allowance: int | None = None,
) -> Result:
    before = used(seeded.url, prefix)
    figures = wrk(
        base, seeded, plan, prefix=prefix, users=users, tokens=tokens, seconds=plan.seconds
    )
    after = used(seeded.url, prefix)
    rss, peak = server_memory(pid)
    accepted, refused = figures["accepted"], figures["refused"]
    answered = accepted + refused + figures["other"]
    exact, exactness = _exactness(before, after, accepted, tokens)
    notes = []
    if figures["sent"] != answered:
        exact = False
        notes.append(f"{figures['sent'] - answered} requests sent but not answered")
    if figures["other"] or figures["socket_errors"]:
        exact = False
        notes.append(
            f"{figures['other']} unexpected answers, {figures['socket_errors']} socket errors"
            f" {figures['stderr'][:300]}"
        )
    if allowance is not None:
        total = accepted * tokens
        met = total == allowance and after == allowance and refused > 0
        exact = exact and met
        exactness += (
            f"; accepted tokens {total:,} {'=' if total == allowance else '≠'} allowance"
            f" {allowance:,}, {refused:,} refused"
        )
    return Result(
        database,
        scenario,
        "tokenadmin API"
        + (f", {plan.postgres_workers} processes" if database == "postgresql" else ", 1 process"),
        answered,
        accepted,
        figures["seconds"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        exact,
        exactness,
        rss,
        peak,
        notes,
    )


# --- one database -------------------------------------------------------------------------


def run_database(database: str, plan: Plan, postgres_admin_url: str) -> DatabaseRun:
    """Seed a throwaway database, run every scenario of the plan, verify, drop it."""
    results: list[Result] = []
    with (
        _throwaway_database(database, postgres_admin_url) as url,
        tempfile.TemporaryDirectory(prefix="tokenadmin-metering-") as scratch,
    ):
        upgrade(url)
        started = time.perf_counter()
        seeded = asyncio.run(_seed(url, plan.users))
        seed_seconds = time.perf_counter() - started
        print(f"{database}: seeded {plan.users:,} users in {seed_seconds:.1f} s", flush=True)
        workdir = Path(scratch)
        targets = {"spread": ("user", plan.users), "hot": ("hot", 1)}

        def limit(scenario: str) -> Result:
            prefix, users = targets[scenario]
            if database == "postgresql":
                return pgbench_limit(seeded, scenario, plan, workdir, prefix=prefix, users=users)
            return sqlite_limit(seeded, scenario, plan, prefix=prefix, users=users)

        measured = [s for s in ("spread", "hot") if s in plan.scenarios]
        for scenario in measured:
            results.append(_show(limit(scenario)))
        workers = plan.postgres_workers if database == "postgresql" else 1
        with server(url, workers) as (base, pid):
            if plan.warmup:
                warm = Plan(**{**plan.__dict__, "seconds": plan.warmup})
                wrk(
                    base,
                    seeded,
                    warm,
                    prefix="user",
                    users=plan.users,
                    tokens=1,
                    seconds=plan.warmup,
                )
            for scenario in measured:
                prefix, users = targets[scenario]
                run = api_run(
                    seeded,
                    database,
                    scenario,
                    plan,
                    base,
                    pid,
                    prefix=prefix,
                    users=users,
                    tokens=1,
                )
                results.append(_show(run))
            if "over-demand" in plan.scenarios:
                results.append(_show(_over_demand(seeded, database, plan, base, pid, results)))
        clean, summary = verify(url)
        print(f"  tokenadmin verify: {'clean' if clean else 'NOT CLEAN'} ({summary})", flush=True)
    return DatabaseRun(database, results, clean, summary, seed_seconds)


def _over_demand(
    seeded: Seeded, database: str, plan: Plan, base: str, pid: int, results: list[Result]
) -> Result:
    """One user whose allowance runs out about halfway through the run."""
    api = [r for r in results if r.system.startswith("tokenadmin")]
    hot = [r for r in api if r.scenario == "hot"] or api  # the closest rate measured
    rate = hot[0].per_second if hot else 100.0
    requests = max(1, int(rate * plan.seconds / 2))  # the accepted requests, if all is well
    tokens = max(1, math.ceil(seeded.minimum / requests))
    allowance = tokens * requests
    asyncio.run(_add_user(seeded.url, seeded.org_id, "over", allowance))
    return api_run(
        seeded, database, "over-demand", plan, base, pid,
        prefix="over", users=1, tokens=tokens, allowance=allowance,
    )  # fmt: skip


def _show(result: Result) -> Result:
    print(
        f"  {result.scenario:12} {result.system:38} {result.per_second:8.0f} ops/s"
        f"  p50 {result.p50_ms:7.1f}  p99 {result.p99_ms:7.1f} ms"
        + (f"  RSS {result.rss_mb:.0f} MB (peak {result.peak_rss_mb:.0f})" if result.rss_mb else "")
        + f"  exact: {'yes' if result.exact else 'NO'} ({result.exactness})"
        + "".join(f"; {note}" for note in result.notes),
        flush=True,
    )
    return result


# --- the record ---------------------------------------------------------------------------


def table(runs: list[DatabaseRun]) -> list[str]:
    lines = [
        "| database | scenario | system | ops/s | p50 ms | p99 ms | API ÷ limit"
        " | server RSS MB (peak) | exact |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        limits = {r.scenario: r for r in run.results if r.system.startswith("limit")}
        for r in run.results:
            ratio = ""
            if not r.system.startswith("limit") and r.scenario in limits:
                ratio = f"{r.per_second / limits[r.scenario].per_second:.2f}"
            memory = f"{r.rss_mb:.0f} ({r.peak_rss_mb:.0f})" if r.rss_mb is not None else ""
            exact = ("yes: " if r.exact else "**NO**: ") + r.exactness
            exact += "".join(f"; {note}" for note in r.notes)
            lines.append(
                f"| {run.database} | {r.scenario} | {r.system} | {r.per_second:,.0f}"
                f" | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {ratio} | {memory} | {exact} |"
            )
    return lines


def record(runs: list[DatabaseRun], plan: Plan, code: str, load: tuple[float, float]) -> None:
    cores = os.cpu_count() or 0
    lines = [
        "",
        f"## Metering: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {code}, {cores} cores",
        "",
        f"`python -m bench.metering`: {plan.users:,} seeded users, {plan.connections}"
        f" connections ({plan.threads} threads), {plan.seconds:g} s per run, 1 token per"
        " request (over-demand: sized to run out halfway). The limit is the bare debit and"
        " its journal entry in one transaction (pgbench `-M prepared`; SQLite: a `sqlite3`"
        " loop in one connection, WAL, synchronous=FULL); the API is POST /v1/usage through"
        " wrk and bench/usage.lua, on the same data. Load average (1 min) at the start"
        f" {load[0]:.1f}, at the end {load[1]:.1f}; wrk, pgbench and the servers share the"
        " machine.",
        "",
        *table(runs),
        "",
        "`tokenadmin verify` after each database: "
        + "; ".join(
            f"{run.database} {'clean' if run.verify_clean else '**NOT CLEAN**'}"
            f" ({run.verify_summary})"
            for run in runs
        )
        + ".",
        "",
    ]
    with RESULTS.open("a") as results_file:
        results_file.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metering", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 users, 3 s runs; no record")
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A PostgreSQL server where a throwaway database may be created.",
    )
    parser.add_argument("--no-record", action="store_true", help="Don't append to RESULTS.md.")
    options = parser.parse_args()
    plan = Plan(
        users=options.users or (1_000 if options.quick else 10_000),
        seconds=options.seconds or (3.0 if options.quick else 10.0),
        connections=options.connections,
    )
    if not 1 <= plan.users <= 1_000_000 or not 0.5 <= plan.seconds <= 300:
        parser.error("--users is 1 to 1,000,000 and --seconds 0.5 to 300")
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if missing:
        parser.error(f"needs {' and '.join(missing)} (apt-get install wrk postgresql-contrib)")
    code = _state_of_the_code()
    load_at_start = os.getloadavg()[0]
    runs = []
    for database in options.databases.split(","):
        if database not in ("sqlite", "postgresql"):
            parser.error(f"unknown database {database!r}")
        runs.append(run_database(database, plan, options.postgres_url))
    print("\n".join(table(runs)))
    if not (options.no_record or options.quick):
        record(runs, plan, code, (load_at_start, os.getloadavg()[0]))
        print(f"Appended to {RESULTS}.")
    if not all(run.verify_clean and all(r.exact for r in run.results) for run in runs):
        sys.exit("An exactness check failed; see above.")


if __name__ == "__main__":
    main()
