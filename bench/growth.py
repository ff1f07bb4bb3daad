"""How cost grows: the spread scenario (the API and its limit) and the user table's query
at 1,000, 10,000 and 100,000 users, then at 100,000 users with the journal grown to
1,000,000 and to 3,000,000 rows; batch ingest (POST /v1/usage/batch) at 100,000 users and
at each journal size; then administration at scale (bench/admin.py) on that same
database.

One organization grows in place (`bulk.seed_users` adds the users; the journal's history
is chained and written in bulk, COPY on PostgreSQL) and one server runs throughout, so
each size is measured on the same data, warm. The history is usage entries of the seeded
users, 1 token each, with the balances after that a replay gives, and the users' used
tokens grow by as much: `tokenadmin verify` stays clean (and is run, timed, at the end).
Each entry of the history also leaves the idempotency record a keyed batch event leaves
(unexpired), so the keys a batch looks up are among as many remembered ones; the planner's
statistics of that table are left as they are (stale: autovacuum may lag).

Targets (issue 14): batch ≥ 15,000 events/s, flat as the journal grows to 3,000,000 rows
(read here as: every size's batches within `FLAT` of the first size's). The spread rows
compare each size with the first (no target of their own).

The batches are measured in `Sizes.batch_rounds` rounds back to back at each size, and
the size's figure is its median round (every round is in the record). One 5-second
round is a sample of a shared 2-core machine, not a figure: three rounds in a row at one
size measured 8,324, 12,437 and 12,838 events/s on PostgreSQL, and a size's first round
after the history's bulk load also pays for that load (its dirty pages, written by a
checkpoint the load set off, and the full-page images that follow it in the WAL: 0.3 to
0.4 of one per event in that round, none in the next).
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bench import admin, batch, pgstats, usage
from bench.data import (
    KEY_NAME,
    SPREAD_MAX_TOKENS,
    Seeded,
    add_users,
    create_organization,
)
from bench.figures import Result, append_to_results, heading, show, yes_no
from bench.load import Plan, Timings
from bench.user_table import _query_times, _throwaway_database, server
from tokenadmin.bulk import EMAIL_DOMAIN, ENTRY_COLUMNS, insert_rows
from tokenadmin.database import Database
from tokenadmin.journal import chain
from tokenadmin.migrate import upgrade
from tokenadmin.models import User
from tokenadmin.rows import update_many

PREFIX = "user"
QUERY = "first page"  # of bench.user_table's scenarios: the user table as it opens
FLAT = 0.8  # batch: every round at least this share of the first
HISTORY_TTL = timedelta(days=2)  # the history's idempotency records are remembered this long
DETAILS = {"model": "bench"}
DETAILS_JSON = chain.details_json(DETAILS)  # the same for every entry: encoded once


@dataclass(frozen=True)
class Sizes:
    """The sizes measured, and how long: the defaults are the recorded run."""

    users: tuple[int, ...] = (1_000, 10_000, 100_000)
    # At the largest size, history is added until the journal holds this many rows, and
    # each is measured.
    journal_rows: tuple[int, ...] = (1_000_000, 3_000_000)
    seconds: float = 4.0
    batch_seconds: float = 5.0  # each round of batches, at the largest size
    batch_rounds: int = 3  # rounds of batches at each size; its figure is the median one
    # On PostgreSQL, what the database did during each size's rounds (bench/pgstats.py):
    # costs two waits of pgstats.SETTLE seconds a size.
    database_counters: bool = True
    query_requests: int = 50
    connections: int = 64
    timeout: float = 30.0
    warmup: float = 1.0
    postgres_workers: int = 2
    batch_connections: int = 8
    batch_events: int = 1_000

    def plan(self, users: int) -> Plan:
        return Plan(
            users=users,
            seconds=self.seconds,
            connections=self.connections,
            timeout=self.timeout,
            warmup=self.warmup,
            postgres_workers=self.postgres_workers,
            batch_connections=self.batch_connections,
            batch_events=self.batch_events,
            scenarios=("spread",),
        )


QUICK = Sizes(
    users=(200, 1_000, 5_000),
    journal_rows=(100_000,),
    seconds=2.0,
    batch_seconds=2.0,
    batch_rounds=1,
    database_counters=False,
    query_requests=10,
)


@dataclass(frozen=True)
class Point:
    """What one size measured."""

    users: int
    journal_entries: int
    limit: Result
    api: Result
    query_p50_ms: float
    query_p99_ms: float
    batch: Result | None = None  # at the largest size: the median of `batch_rounds`
    batch_rounds: tuple[Result, ...] = ()  # every round, in the order run


@dataclass
class GrowthRun:
    database: str
    points: list[Point]
    seconds_to_add: dict[str, float]  # what was added between the sizes, and how long it took


@dataclass
class RunAtScale:
    growth: GrowthRun
    admin: admin.AdminRun

    @property
    def clean(self) -> bool:
        points = self.growth.points
        return self.admin.clean and all(
            p.limit.exact and p.api.exact and (p.batch is None or p.batch.exact) for p in points
        )


def batch_rounds(run: GrowthRun) -> list[tuple[int, Result]]:
    """Each size's batch figure (its median round), with the journal's rows at it."""
    return [(p.journal_entries, p.batch) for p in run.points if p.batch is not None]


def flatness(run: GrowthRun) -> float | None:
    """The slowest size's batches ÷ the first size's (None: fewer than two sizes)."""
    rounds = [result.per_second for _, result in batch_rounds(run)]
    if len(rounds) < 2 or not rounds[0]:
        return None
    return min(rounds) / rounds[0]


# --- the data -----------------------------------------------------------------------------


def add_history(url: str, entries: int, users: int) -> int:
    """About `entries` usage entries of the seeded users (the same number each, 1 token,
    interleaved as if over time), chained into each user's hash chain as the service
    chains them, their used tokens, and for each entry the idempotency record a keyed
    batch event leaves, in one transaction; how many."""
    per_user = max(1, math.ceil(entries / users)) if entries > 0 else 0
    now = datetime.now(UTC)
    users_table = cast(Table, User.__table__)

    async def work(session: AsyncSession) -> None:
        seeded = (
            await session.execute(
                select(
                    users_table.c.id,
                    users_table.c.org_id,
                    users_table.c.max_tokens,
                    users_table.c.inference_used,
                    users_table.c.inference_reserved,
                    users_table.c.journal_head,
                )
                .where(users_table.c.email.like(f"{PREFIX}%@{EMAIL_DOMAIN}"))
                .order_by(users_table.c.id)
            )
        ).all()
        heads = {user.id: user.journal_head for user in seeded}
        postgres = session.get_bind().dialect.name == "postgresql"
        for n in range(1, per_user + 1):
            entries = [_history_entry(user, n, now, heads) for user in seeded]
            records = [_record(entry, now, postgres) for entry in entries]
            rows = [_stored(entry, postgres) for entry in entries]
            await insert_rows(session, "journal_entries", ENTRY_COLUMNS, rows)
            await insert_rows(session, "idempotency_records", RECORD_COLUMNS, records)
        counters = [
            {
                "id": user.id,
                "inference_used": user.inference_used + per_user,
                "journal_head": heads[user.id],
            }
            for user in seeded
        ]
        await session.run_sync(update_many, users_table, "id", counters)

    async def run() -> None:
        db = Database(url, pool_size=1)
        try:
            await db.write(work)
            if db.dialect == "postgresql":
                async with db.engine.connect() as connection:
                    await connection.execute(text("ANALYZE users, journal_entries"))
                    await connection.commit()
        finally:
            await db.dispose()

    asyncio.run(run())
    return per_user * users


RECORD_COLUMNS = (
    "scope", "key", "fingerprint", "status_code", "response", "created_at", "expires_at",
)  # fmt: skip


def _record(entry: dict[str, Any], now: datetime, postgres: bool) -> tuple[Any, ...]:
    """The idempotency record of a history entry, as a batch event with a key leaves one."""
    used = entry["used_after"]
    key = f"history-{entry['user_id'].hex}-{used}"
    answer = f'{{"used": {used}, "remaining": {entry["allowance_after"] - used}}}'
    times: tuple[Any, Any] = (now, now + HISTORY_TTL)
    if not postgres:  # SQLite: UTCDateTime is naive UTC text
        times = (usage.sqlite_time(now), usage.sqlite_time(now + HISTORY_TTL))
    return (f"org:{entry['org_id']}", key, entry["hash"], 200, answer, *times)


def _stored(entry: dict[str, Any], postgres: bool) -> tuple[Any, ...]:
    """An entry in the database driver's form, as `bulk.insert_rows` takes it."""
    if not postgres:  # SQLite: Uuid is CHAR(32), UTCDateTime naive UTC text
        entry["org_id"] = entry["org_id"].hex
        entry["user_id"] = entry["user_id"].hex
        entry["created_at"] = usage.sqlite_time(entry["created_at"])
    entry["details"] = json.dumps(entry["details"])
    return tuple(entry[column] for column in ENTRY_COLUMNS)


def _history_entry(
    user: Any, n: int, now: datetime, heads: dict[uuid.UUID, str | None]
) -> dict[str, Any]:
    """The `n`th usage of 1 token by `user`, as `journal.service.record` writes it."""
    entry: dict[str, Any] = {
        "org_id": user.org_id,
        "user_id": user.id,
        "purchase_id": None,
        "reservation_id": None,
        "created_at": now,
        "actor": f"key:{KEY_NAME}",
        "action": "usage",
        "kind": "inference",
        "amount": 1,
        "reason": None,
        "capacity_delta": 0,
        "allocated_delta": 0,
        "allowance_delta": 0,
        "used_delta": 1,
        "reserved_delta": 0,
        "capacity_after": None,
        "allocated_after": None,
        "allowance_after": user.max_tokens,
        "used_after": user.inference_used + n,
        "reserved_after": user.inference_reserved,
        "details": DETAILS,
    }
    entry["prev_hash"] = heads[user.id]
    entry["hash"] = heads[user.id] = chain.link_encoded(heads[user.id], entry, DETAILS_JSON)
    return entry


def journal_size(url: str) -> int:
    async def run() -> int:
        db = Database(url, pool_size=1)
        try:
            count = await db.read(
                lambda session: session.scalar(text("SELECT count(*) FROM journal_entries"))
            )
            return int(count or 0)
        finally:
            await db.dispose()

    return asyncio.run(run())


# --- one size -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    database: str
    seeded: Seeded
    base: str
    pid: int
    workdir: Path


def measure(at: Server, sizes: Sizes, users: int, *, batches: bool = False) -> Point:
    """The spread scenario's limit and API, and the user table's query, at this size; with
    `batches`, a round of batches too."""
    plan = sizes.plan(users)
    entries = journal_size(at.seeded.url)
    print(f"  {users:,} users, {entries:,} journal entries:", flush=True)
    limit = show(
        usage.limit(at.database, at.seeded, "spread", plan, at.workdir, prefix=PREFIX, users=users)
    )
    if plan.warmup:
        usage.warm_up(at.base, at.seeded, plan)
    api = show(
        usage.api_run(
            at.seeded, at.database, "spread", plan, at.base, at.pid, prefix=PREFIX, users=users
        )
    )
    found = asyncio.run(
        _query_times(at.seeded.url, at.seeded.org_id, sizes.query_requests, warmup=3)
    )[QUERY]
    query = Timings(len(found), 0.0, sorted(found))
    print(f"    user table ({QUERY}): p50 {query.p50:.1f}  p99 {query.p99:.1f} ms", flush=True)
    rounds: list[Result] = []
    watch = batches and at.database == "postgresql" and sizes.database_counters
    before = pgstats.settled(at.seeded.url) if watch else None
    for number in range(sizes.batch_rounds if batches else 0):
        scenario = f"batch at {entries:,} rows, round {number + 1} of {sizes.batch_rounds}"
        rounds.append(
            show(
                batch.api_run(
                    at.seeded,
                    at.database,
                    replace(plan, seconds=sizes.batch_seconds),
                    at.base,
                    at.pid,
                    scenario=scenario,
                )
            )
        )
    median = median_round(rounds) if rounds else None
    if median is not None and before is not None:
        events = sum(result.answered for result in rounds)
        what = pgstats.describe(before, pgstats.settled(at.seeded.url), events)
        print(f"    {len(rounds)} rounds: {what}", flush=True)
        median = replace(median, notes=[*median.notes, f"the {len(rounds)} rounds' {what}"])
    return Point(users, entries, limit, api, query.p50, query.p99, median, tuple(rounds))


def median_round(rounds: list[Result]) -> Result:
    """The round of median rate (of an even number, the slower of the middle two), with
    every round's rate in its notes; exact only if every round was, any other round's
    inexactness added to its own."""
    ordered = sorted(rounds, key=lambda result: result.per_second)
    middle = ordered[(len(ordered) - 1) // 2]
    if len(rounds) == 1:
        return middle
    rates = ", ".join(f"{result.per_second:,.0f}" for result in rounds)
    notes = [*middle.notes, f"median of {len(rounds)} rounds in a row: {rates} events/s"]
    wrong = [result for result in rounds if not result.exact]
    exactness = "; ".join([middle.exactness] + [r.exactness for r in wrong if r is not middle])
    return replace(middle, exact=not wrong, exactness=exactness, notes=notes)


def run_database(
    database: str, sizes: Sizes, scale: admin.Scale, postgres_admin_url: str
) -> RunAtScale:
    """Grow one organization through the sizes, measuring each; then administration at
    scale on it; then verify (timed, as part of the administration)."""
    biggest = max(sizes.users)
    capacity = biggest * SPREAD_MAX_TOKENS + admin.CAPACITY_ROOM
    workers = sizes.postgres_workers if database == "postgresql" else 1
    with (
        _throwaway_database(database, postgres_admin_url) as url,
        tempfile.TemporaryDirectory(prefix="tokenadmin-growth-") as scratch,
    ):
        upgrade(url)
        seeded = create_organization(url, "Bench Growth", capacity)
        print(f"{database}: how cost grows", flush=True)
        added: dict[str, float] = {}
        points: list[Point] = []
        with server(url, workers) as (base, pid):
            at = Server(database, seeded, base, pid, Path(scratch))
            have = 0
            for users in sizes.users:
                started = time.perf_counter()
                add_users(
                    url, seeded.org_id, users - have, max_tokens=SPREAD_MAX_TOKENS, prefix=PREFIX
                )
                added[f"{users - have:,} users (bulk.seed_users)"] = time.perf_counter() - started
                have = users
                points.append(measure(at, sizes, users, batches=users == biggest))
            for rows in sizes.journal_rows:
                started = time.perf_counter()
                entries = add_history(url, rows - journal_size(url), have)
                seconds = time.perf_counter() - started
                added[f"{entries:,} journal entries (chained, inserted in bulk)"] = seconds
                print(f"  added {entries:,} journal entries in {seconds:.1f} s", flush=True)
                points.append(measure(at, sizes, have, batches=True))
            admin_run = admin.run(database, at.seeded, base, have, scale, Path(scratch))
    return RunAtScale(GrowthRun(database, points, added), admin_run)


# --- the record ---------------------------------------------------------------------------


def _ratio(value: float, first: float) -> float:
    return value / first if first else math.inf


def _exact(result: Result) -> str:
    text = ("yes: " if result.exact else "**NO**: ") + result.exactness
    return text + "".join(f"; {note}" for note in result.notes)


def batch_target(result: Result, first: Result) -> str:
    """Issue 14's batch targets for one round: the rate, and flat against the first round."""
    target = batch.TARGET_EVENTS_PER_SECOND
    checks = [f"≥ {target:,} events/s: {yes_no(result.per_second >= target)}"]
    if result is not first:
        flat = result.per_second >= FLAT * first.per_second
        checks.append(f"≥ {FLAT:g}× the first size's: {yes_no(flat)}")
    return "; ".join(checks)


def _rows(database: str, point: Point, first: Point, first_batch: Result | None) -> list[str]:
    rows = []
    where = f"| {database} | {point.users:,} | {point.journal_entries:,}"
    measures: list[tuple[str, Result, Result | None]] = [
        (f"spread, {point.limit.system}", point.limit, first.limit),
        (f"spread, {point.api.system}", point.api, first.api),
    ]
    if point.batch is not None:
        measures.append((f"batch, {point.batch.system}", point.batch, first_batch))
    for name, result, base in measures:
        base = base or result
        target = batch_target(result, base) if result is point.batch else ""
        exact = _exact(result) if result is point.batch else yes_no(result.exact)
        rows.append(
            f"{where} | {name} | {result.rate}"
            f" ({_ratio(result.per_second, base.per_second):.2f}×) | {result.p50_ms:.1f}"
            f" | {result.p99_ms:.1f} | {_ratio(result.p50_ms, base.p50_ms):.2f}"
            f" | {_ratio(result.p99_ms, base.p99_ms):.2f} | {target} | {exact} |"
        )
    rows.append(
        f"{where} | user table query ({QUERY}), in process |"
        f" | {point.query_p50_ms:.1f} | {point.query_p99_ms:.1f}"
        f" | {_ratio(point.query_p50_ms, first.query_p50_ms):.2f}"
        f" | {_ratio(point.query_p99_ms, first.query_p99_ms):.2f} | | |"
    )
    return rows


def table(runs: list[GrowthRun]) -> list[str]:
    lines = [
        "| database | users | journal entries | measure | rate (÷ first) | p50 ms | p99 ms"
        " | p50 ÷ first | p99 ÷ first | target met (issue 14) | exact |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs:
        first = run.points[0]
        rounds = batch_rounds(run)
        first_batch = rounds[0][1] if rounds else None
        for point in run.points:
            lines.extend(_rows(run.database, point, first, first_batch))
    return lines


def record(runs: list[GrowthRun], sizes: Sizes, code: str) -> None:
    added = "; ".join(
        f"{run.database}: "
        + ", ".join(f"{what} {s:.1f} s" for what, s in run.seconds_to_add.items())
        for run in runs
    )
    lines = [
        "",
        heading("How cost grows", code),
        "",
        "`python -m bench.metering` (bench/growth.py): one organization grown in place, one"
        " server throughout; at each size the spread scenario (POST /v1/usage, a random one"
        f" of the users, {sizes.connections} connections, {sizes.seconds:g} s; the limit as in"
        " the metering table) and the user table's query"
        f" (`user.repository.search`, {QUERY}, {sizes.query_requests} sequential calls in"
        f" process); at the largest size, then with the journal grown to"
        f" {' and '.join(f'{rows:,}' for rows in sizes.journal_rows)} rows, batches"
        f" (POST /v1/usage/batch, {sizes.batch_events:,} events a request,"
        f" {sizes.batch_connections} connections) in {sizes.batch_rounds} rounds of"
        f" {sizes.batch_seconds:g} s back to back, the median round shown (the notes give"
        " every round's rate). The history"
        " added leaves an idempotency record per entry, as keyed batch events do, and the"
        " planner's statistics of that table are not refreshed. Targets (issue 14): batch"
        f" ≥ {batch.TARGET_EVENTS_PER_SECOND:,} events/s, flat as the journal grows (read"
        f" as: each size's median round ≥ {FLAT:g}× the first size's). \"first\" is the"
        " first row of the same measure.",
        "",
        *table(runs),
        "",
        f"Added between the sizes: {added}.",
        "",
    ]
    append_to_results(lines)
