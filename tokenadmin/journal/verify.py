"""`verify` at scale: the journal replayed from raw columns, its chains checked in parallel.

Every check is one of a chain's (a user's or an organization's entries, in id order: the
hash chain, and a user's balances after each entry), or of an organization's (capacity and
allocated after each entry that moves them, in id order across its users). So the users are
split into ranges of ids, and each range is checked by a process of its own
(`ProcessPoolExecutor`, each worker reading its entries, users and open reservations with
its own connection: on PostgreSQL in the snapshot of the caller's transaction, `SET
TRANSACTION SNAPSHOT`; on SQLite, which cannot share a snapshot, in one of its own, see
`_sqlite`), while this process replays the organizations' totals from the entries that
move them. For a small journal, one process does all of it in one pass. Entries are read
as the driver gives them, without a row object or type conversion each: PostgreSQL's COPY
text, the sqlite3 cursor's tuples (see `chain.Chains.entries`). The replay of the chains,
and each worker's reading, are in journal/chain.py, which a worker imports without this
module's SQLAlchemy and models: half a second of CPU less at each worker's start.

Each difference carries the place it has in the report `verify` has always given (entries
in id order, each entry's chain before its balances; then organizations; then users), so
the report is the same, in the same order, however the work was split.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, cast

from sqlalchemy import Table, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tokenadmin.journal import chain, repository
from tokenadmin.journal.chain import (
    ALLOCATED,
    CAPACITY,
    ENTRY,
    ORGANIZATION,
    ORGANIZATION_UNKNOWN,
    SQLITE_CELLS,
    SQLITE_FETCH,
    USER_COLUMNS,
    Chains,
    Found,
)
from tokenadmin.models import JournalEntry, Organization, Reservation, User
from tokenadmin.organization import repository as organization_repository
from tokenadmin.rows import gc_paused
from tokenadmin.tokens import Kind

PARALLEL_FROM = 200_000
"""Entries from which the journal is checked by several processes: below it,
starting them costs more than it saves."""
WORKERS = min(4, max(2, os.cpu_count() or 2))


class Organizations:
    """Replays each organization's capacity and allocated, entry by entry in id order,
    from the entries that move them or state them."""

    def __init__(self, found: Found) -> None:
        self.found = found
        self.totals: dict[tuple[uuid.UUID, str], list[int]] = {}

    def entries(self, rows: Iterable[Any]) -> None:
        """Rows: id, org_id, kind, capacity_delta, allocated_delta, capacity_after,
        allocated_after; of entries with a kind."""
        differ = self.found.differences.append
        totals = self.totals
        for entry_id, org_id, kind, capacity, allocated, capacity_after, allocated_after in rows:
            replay = totals.get((org_id, kind))
            if replay is None:
                replay = totals[(org_id, kind)] = [0, 0]
            replay[0] += capacity
            replay[1] += allocated
            if capacity_after is not None and capacity_after != replay[0]:
                differ(
                    (
                        (ENTRY, entry_id, CAPACITY),
                        f"entry {entry_id}: capacity_after {capacity_after} != replay {replay[0]}",
                    )
                )
            if allocated_after is not None and allocated_after != replay[1]:
                differ(
                    (
                        (ENTRY, entry_id, ALLOCATED),
                        f"entry {entry_id}: allocated_after {allocated_after}"
                        f" != replay {replay[1]}",
                    )
                )

    async def stored(self, session: AsyncSession) -> None:
        """Compare every stored organization with the replay and its purchases and users;
        then name the organizations the journal names but which are not stored."""
        found, differ = self.found, self.found.differences.append
        for position, org in enumerate(await repository.all_organizations(session)):
            found.organizations += 1
            compare = chain.Compare(differ, (ORGANIZATION, position))

            last_id, last_hash = found.org_last.get(org.id, (None, None))
            if org.journal_head != last_hash:
                newest = "no entry" if last_id is None else f"entry {last_id}"
                compare.head(
                    f"the journal of organization {org.id} ends at {newest}, which is not"
                    " its newest entry: entries were removed from its end"
                )
            sums = await repository.organization_sums(session, org.id)
            found.org_first.pop(org.id, None)
            for kind in Kind:
                replay = self.totals.get((org.id, kind.value), [0, 0])
                label = f"organization {org.id} ({org.name}) {kind}"
                compare(f"{label} capacity", org.capacity(kind), replay[0])
                compare(f"{label} allocated", org.allocated(kind), replay[1])
                compare(f"{label} capacity vs purchases", org.capacity(kind), sums.capacity[kind])
                compare(
                    f"{label} allocated vs allowances", org.allocated(kind), sums.allowances[kind]
                )
            await _check_counted_usage(session, org, compare)
        for org_id, first in found.org_first.items():
            differ(
                (
                    (ORGANIZATION_UNKNOWN, first),
                    f"journal names organization {org_id}, which is not stored",
                )
            )


async def _check_counted_usage(
    session: AsyncSession, org: Organization, compare: chain.Compare
) -> None:
    """Rule 3's running totals, where kept, against the users' sums: kept whole, and only
    while the capacity binds (`Organization.counted_usage`)."""
    totals = (org.used_inference, org.used_training, org.reserved_inference, org.reserved_training)
    if all(total is None for total in totals):
        return
    label = f"organization {org.id} ({org.name})"
    if any(total is None for total in totals):
        compare.head(f"{label} keeps some of its running totals of usage, not all: {totals}")
        return
    if not org.binds():
        compare.head(f"{label} keeps running totals of usage while its capacity does not bind")
    usage = await organization_repository.period_usage(session, org.id, org.period_start)
    for kind in Kind:
        counted = org.counted_usage(org.period_start)
        assert counted is not None
        for index, what in enumerate(("used this period", "reserved")):
            compare(
                f"{label} {kind} {what} (running total) vs users",
                counted[kind][index],
                usage[kind][index],
            )


@dataclass
class Outcome:
    organizations: int
    users: int
    entries: int
    differences: list[str]


async def run(
    session: AsyncSession,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Outcome:
    """Replay the whole journal, in the caller's transaction (its snapshot; on SQLite, the
    workers in snapshots of their own, begun after it: see `_sqlite`), and compare it with
    every stored balance. `workers`: how many processes check the users' chains
    (None: several when the journal is big, else this one)."""
    found = Found()
    organizations = Organizations(found)
    with gc_paused():
        if session.get_bind().dialect.name == "postgresql":
            await _postgresql(session, found, organizations, progress, workers)
        else:
            await _sqlite(session, found, organizations, progress, workers)
        await organizations.stored(session)
    found.differences.sort(key=lambda difference: difference[0])
    return Outcome(
        organizations=found.organizations,
        users=found.users,
        entries=found.entries,
        differences=[message for _, message in found.differences],
    )


# --- one process ------------------------------------------------------------------------

_ENTRIES = cast(Table, JournalEntry.__table__)
_USERS = cast(Table, User.__table__)
_ORG_ENTRIES = (
    select(
        *(
            _ENTRIES.c[name]
            for name in (
                "id",
                "org_id",
                "kind",
                "capacity_delta",
                "allocated_delta",
                "capacity_after",
                "allocated_after",
            )
        )
    )
    .where(
        _ENTRIES.c.kind.is_not(None),
        or_(
            _ENTRIES.c.capacity_delta != 0,
            _ENTRIES.c.allocated_delta != 0,
            _ENTRIES.c.capacity_after.is_not(None),
            _ENTRIES.c.allocated_after.is_not(None),
        ),
    )
    .order_by(_ENTRIES.c.id)
)


def _sqlite_alone(
    session: Session,
    found: Found,
    organizations: Organizations,
    progress: Callable[[int], None] | None,
) -> None:
    """Every entry in id order, in this process, read from the driver's own cursor (rows
    of plain values, no SQLAlchemy row or type conversion per entry)."""
    connection = session.connection()
    chains = Chains(found, SQLITE_CELLS)
    cursor = connection.connection.dbapi_connection.cursor(server_side=True)  # type: ignore[union-attr]
    try:
        cursor.execute(
            f"SELECT {', '.join(chain.entry_columns('sqlite'))} FROM journal_entries ORDER BY id"
        )
        while rows := cursor.fetchmany(SQLITE_FETCH):
            chains.entries(rows)
            if progress is not None:
                progress(found.entries)
    finally:
        cursor.close()
    chains.finish()
    organizations.entries(connection.execute(_ORG_ENTRIES))
    users = select(*(_USERS.c[name] for name in USER_COLUMNS)).order_by(_USERS.c.id)
    chains.users(
        connection.execute(users.execution_options(yield_per=10_000)), _reservations(connection)
    )
    if progress is not None:
        progress(found.entries)


def _reservations(connection: Any) -> dict[tuple[uuid.UUID, str], int]:
    """Open reservations' amounts per user and kind."""
    statement = (
        select(Reservation.user_id, Reservation.kind, func.sum(Reservation.amount))
        .where(Reservation.status == "open")
        .group_by(Reservation.user_id, Reservation.kind)
    )
    return {(user_id, kind): int(total) for user_id, kind, total in connection.execute(statement)}


# --- SQLite, in parallel -------------------------------------------------------------------


async def _sqlite(
    session: AsyncSession,
    found: Found,
    organizations: Organizations,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> None:
    """SQLite's journal: in this process (a small one, or a database not in a file), or
    its users' chains split across processes, each reading with a connection of its own.

    SQLite cannot share a transaction's snapshot with another connection, so a worker
    reads in a read transaction of its own, begun later than the caller's: it sees what
    was committed by then, which may be more. So each check is made within one snapshot:
    a worker checks its users' chains against those users' rows and open reservations,
    all read in its one transaction (a user's chain, row and reservations are written in
    the same transactions, so they agree in any snapshot; entries are never changed, so a
    later snapshot only has more of them). This process checks in the caller's snapshot
    what spans users: the organizations' chains against their rows, and their capacity
    and allocated against the entries that move them, their purchases and their users'
    allowances. The one check that would mix the two, an organization the journal names
    but which is not stored, counts only entries the caller's snapshot holds (ids up to
    its newest: SQLite's writers take turns, and each new entry's id is above every id
    committed before it)."""
    path = _sqlite_file(session)
    if workers is None:
        workers = await _workers(session)
    if workers <= 1 or path is None:
        await session.run_sync(_sqlite_alone, found, organizations, progress)
        return
    newest = (
        await session.execute(text("SELECT coalesce(max(id), 0) FROM journal_entries"))
    ).scalar_one()
    bounds = await _bounds(session, workers)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=len(bounds) - 1, mp_context=get_context("spawn")) as pool:
        futures = [
            loop.run_in_executor(pool, chain.check_sqlite_part, path, bounds[i], bounds[i + 1])
            for i in range(len(bounds) - 1)
        ]
        # Meanwhile, here, in the caller's snapshot: what spans users.
        own = Found()
        await session.run_sync(_sqlite_organizations, own, organizations)
        found.merge(own)
        for part in await asyncio.gather(*futures):
            found.merge(part)
            if progress is not None:
                progress(found.entries)
    found.org_first = {
        org_id: first for org_id, first in found.org_first.items() if first <= newest
    }


def _sqlite_file(session: AsyncSession) -> str | None:
    """The file of the session's SQLite database (None: in memory, or named as a URI,
    which another connection could not open as this one did)."""
    database = session.get_bind().engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def _sqlite_organizations(session: Session, found: Found, organizations: Organizations) -> None:
    """The organizations' chains (the entries without a user, found by their index) and
    the entries that move their capacity or allocated, in the session's transaction."""
    connection = session.connection()
    chains = Chains(found, SQLITE_CELLS)
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            f"SELECT {', '.join(chain.entry_columns('sqlite'))} FROM journal_entries"
            " WHERE user_id IS NULL ORDER BY id"
        )
        chains.entries(cursor.fetchall())
    finally:
        cursor.close()
    chains.finish()
    organizations.entries(connection.execute(_ORG_ENTRIES))


# --- PostgreSQL, in parallel --------------------------------------------------------------


async def _postgresql(
    session: AsyncSession,
    found: Found,
    organizations: Organizations,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> None:
    if workers is None:
        workers = await _workers(session)
    if workers <= 1:
        # This process, on the session's own connection (its transaction and snapshot).
        raw = await (await session.connection()).get_raw_connection()
        found.merge(
            await chain.replay_postgresql(raw.driver_connection, None, None, True, progress)
        )
        organizations.entries((await session.execute(_ORG_ENTRIES)).all())
        return
    snapshot = (await session.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    bounds = await _bounds(session, workers)
    options = _connect_options(session)
    parts = [(options, snapshot, bounds[i], bounds[i + 1], i == 0) for i in range(len(bounds) - 1)]
    loop = asyncio.get_running_loop()
    # Started afresh rather than forked: a fork copies this process's threads' locks as they
    # are (the CLI's progress bar draws from a thread), and a child may wait on one forever.
    with ProcessPoolExecutor(max_workers=len(parts), mp_context=get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, chain.check_postgresql_part, *part) for part in parts]
        # Meanwhile, here: the organizations' totals, from the entries that move them.
        organizations.entries((await session.execute(_ORG_ENTRIES)).all())
        for part in await asyncio.gather(*futures):
            found.merge(part)
            if progress is not None:
                progress(found.entries)


async def _workers(session: AsyncSession) -> int:
    """How many processes check the users' chains: several when the journal is big (its
    span of ids, read from the primary key's ends), else this one."""
    span = (
        await session.execute(
            text("SELECT coalesce(max(id) - min(id) + 1, 0) FROM journal_entries")
        )
    ).scalar_one()
    return WORKERS if span >= PARALLEL_FROM else 1


async def _bounds(session: AsyncSession, workers: int) -> list[Any]:
    """Ids splitting the users into `workers` ranges of about as many users: None, the
    first id of each range but the first, None (ids as the driver gives them: a UUID on
    PostgreSQL, SQLite's 32 hex digits)."""
    count = (await session.execute(text("SELECT count(*) FROM users"))).scalar_one()
    bounds: list[Any] = [None]
    for part in range(1, workers):
        offset = count * part // workers
        bound = (
            await session.execute(
                text("SELECT id FROM users ORDER BY id LIMIT 1 OFFSET :offset"),
                {"offset": offset},
            )
        ).scalar()
        if bound is not None and bound not in bounds:
            bounds.append(bound)
    bounds.append(None)
    return bounds


def _connect_options(session: AsyncSession) -> dict[str, Any]:
    """asyncpg.connect's arguments for the session's database, as SQLAlchemy's asyncpg
    dialect makes them from its URL: its query (`?ssl=require`, say) becomes the arguments
    asyncpg takes, which a DSN of the same URL would pass to the server as settings."""
    engine = session.get_bind().engine
    _, options = engine.dialect.create_connect_args(engine.url)
    for dialect_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        options.pop(dialect_only, None)
    return cast(dict[str, Any], options)
