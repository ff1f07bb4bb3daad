"""`verify` at scale: the journal replayed from raw columns, its chains checked in parallel.

Every check is one of a chain's (a user's or an organization's entries, in id order: the
hash chain, and a user's balances after each entry), or of an organization's (capacity and
allocated after each entry that moves them, in id order across its users). So the users are
split into ranges of ids, and each range is checked by a process of its own (PostgreSQL:
`ProcessPoolExecutor`, each worker reading its entries, users and open reservations with
its own connection, in the snapshot of the caller's transaction, `SET TRANSACTION
SNAPSHOT`), while this process replays the organizations' totals from the few entries
that move them. On SQLite, or for a small journal, one process does all of it in one pass.

Each difference carries the place it has in the report `verify` has always given (entries
in id order, each entry's chain before its balances; then organizations; then users), so
the report is the same, in the same order, however the work was split.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, Text, func, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tokenadmin.journal import chain, repository
from tokenadmin.models import JournalEntry, Reservation, User
from tokenadmin.rows import gc_paused
from tokenadmin.tokens import Kind

# The entry's columns in the order the checks read them (by position).
COLUMNS = (
    "id",
    "org_id",
    "user_id",
    "kind",
    "capacity_delta",
    "allocated_delta",
    "allowance_delta",
    "used_delta",
    "reserved_delta",
    "capacity_after",
    "allocated_after",
    "allowance_after",
    "used_after",
    "reserved_after",
    "purchase_id",
    "reservation_id",
    "created_at",
    "actor",
    "action",
    "amount",
    "reason",
    "details",
    "prev_hash",
    "hash",
)
USER_COLUMNS = (
    "id",
    "email",
    "max_tokens",
    "max_train_tokens",
    "inference_used",
    "training_used",
    "inference_reserved",
    "training_reserved",
    "journal_head",
)
KINDS = tuple(kind.value for kind in Kind)

PARALLEL_FROM = 200_000
"""Entries from which PostgreSQL's journal is checked by several processes: below it,
starting them costs more than it saves."""
WORKERS = min(4, max(2, os.cpu_count() or 2))
FETCH = 5_000  # rows per round trip of a worker's cursor
DETAILS_KEPT = 10_000

# Where a difference goes in the report: entries (by id, then what of the entry), then
# organizations (in id order), those the journal names but which are not stored (by the
# first entry naming them), users (in id order), users not stored (likewise).
ENTRY, ORGANIZATION, ORGANIZATION_UNKNOWN, USER, USER_UNKNOWN = range(5)
CHAIN, CAPACITY, ALLOCATED = 0, 1, 2
USER_BALANCES = (("allowance", 3), ("used", 4), ("reserved", 5))

Place = tuple[int, ...]


@dataclass
class Found:
    """What a part of the work found: its differences, each with its place in the report."""

    entries: int = 0
    organizations: int = 0
    users: int = 0
    differences: list[tuple[Place, str]] = field(default_factory=list)
    org_first: dict[uuid.UUID, int] = field(default_factory=dict)
    """Each organization an entry with a kind names: the first such entry's id."""
    org_last: dict[uuid.UUID, tuple[int, str | None]] = field(default_factory=dict)
    """The organizations' chains (entries without a user): their last entry and hash."""

    def merge(self, other: Found) -> None:
        self.entries += other.entries
        self.users += other.users
        self.differences.extend(other.differences)
        for org_id, first in other.org_first.items():
            self.org_first[org_id] = min(first, self.org_first.get(org_id, first))
        self.org_last.update(other.org_last)


class Chains:
    """Replays the chains of a part of the journal: each chain's hashes, and each user's
    balances after each entry. Entries come in id order within each chain."""

    def __init__(self, found: Found, mapping: Callable[[Any], Mapping[str, Any]]) -> None:
        self.found = found
        self.mapping = mapping  # a row as the mapping `chain.link` reads
        self.details: dict[str | None, str] = {}  # stored details -> as the hash spells them
        self.user_last: dict[uuid.UUID, tuple[int, str | None]] = {}
        self.totals: dict[tuple[uuid.UUID, str], list[int]] = {}
        self.user_first: dict[uuid.UUID, int] = {}

    def entries(self, rows: Iterable[Any]) -> None:
        found, differ = self.found, self.found.differences.append
        link, mapping, spelled = chain.link_encoded, self.mapping, self.details
        user_last, org_last, totals = self.user_last, found.org_last, self.totals
        org_first, user_first = found.org_first, self.user_first
        count = 0
        for row in rows:
            count += 1
            entry_id, org_id, user_id, kind = row[0], row[1], row[2], row[3]
            lasts = org_last if user_id is None else user_last
            owner = org_id if user_id is None else user_id
            last_id, last_hash = lasts.get(owner, (None, None))
            if row[22] != last_hash:
                after = "its start" if last_id is None else f"entry {last_id}"
                differ(
                    (
                        (ENTRY, entry_id, CHAIN),
                        f"entry {entry_id}: the journal of"
                        f" {'organization' if user_id is None else 'user'} {owner} does not"
                        f" continue from {after}: an entry was removed or inserted there",
                    )
                )
            elif row[23] != link(
                last_hash, mapping(row), spelled.get(row[21]) or self.spell(row[21])
            ):
                differ(
                    (
                        (ENTRY, entry_id, CHAIN),
                        f"entry {entry_id}: changed since it was written (it no longer"
                        " matches its hash)",
                    )
                )
            lasts[owner] = (entry_id, row[23])
            if kind is None:
                continue
            if org_id not in org_first:
                org_first[org_id] = entry_id
            if user_id is None:
                continue
            replay = totals.get((user_id, kind))
            if replay is None:
                replay = totals[(user_id, kind)] = [0, 0, 0]
                user_first.setdefault(user_id, entry_id)
            replay[0] += row[6]
            replay[1] += row[7]
            replay[2] += row[8]
            for index, (name, place) in enumerate(USER_BALANCES):
                after_value = row[11 + index]
                if after_value is not None and after_value != replay[index]:
                    differ(
                        (
                            (ENTRY, entry_id, place),
                            f"entry {entry_id}: {name}_after {after_value}"
                            f" != replay {replay[index]} (user {user_id}, {kind})",
                        )
                    )
        found.entries += count

    def spell(self, stored: str | None) -> str:
        """Details as stored (JSON text, or None) as the hash spells them; remembered, as
        entries often say the same (up to DETAILS_KEPT different ones)."""
        spelled = chain.details_json(None if stored is None else json.loads(stored))
        if len(self.details) >= DETAILS_KEPT:
            self.details.clear()
        self.details[stored] = spelled
        return spelled

    def users(self, rows: Iterable[Any], reserved: Mapping[tuple[uuid.UUID, str], int]) -> None:
        """Compare every stored user (rows of USER_COLUMNS, in id order) with the replay;
        then name the users the journal names but who are not stored."""
        found, differ = self.found, self.found.differences.append
        totals, user_last = self.totals, self.user_last
        for row in rows:
            user_id, email = row[0], row[1]
            found.users += 1
            compare = _Compare(differ, (USER, user_id.int))

            last_id, last_hash = user_last.get(user_id, (None, None))
            if row[8] != last_hash:
                newest = "no entry" if last_id is None else f"entry {last_id}"
                compare.head(
                    f"the journal of user {user_id} ends at {newest}, which is not its"
                    " newest entry: entries were removed from its end"
                )
            for index, kind in enumerate(KINDS):
                label = f"user {user_id} ({email}) {kind}"
                replay = totals.pop((user_id, kind), None) or [0, 0, 0]
                stored_reserved = row[6 + index]
                compare(f"{label} allowance", row[2 + index], replay[0])
                compare(f"{label} used", row[4 + index], replay[1])
                compare(f"{label} reserved", stored_reserved, replay[2])
                compare(
                    f"{label} reserved vs open reservations",
                    stored_reserved,
                    reserved.get((user_id, kind), 0),
                )
            self.user_first.pop(user_id, None)
        for user_id, first in self.user_first.items():
            differ(((USER_UNKNOWN, first), f"journal names user {user_id}, who is not stored"))


class _Compare:
    """Stored values against expected ones, of one organization or user, each difference
    at its place: the chain's head first, then each comparison in the order made."""

    def __init__(self, differ: Callable[[tuple[Place, str]], None], place: Place) -> None:
        self.differ = differ
        self.place = place
        self.made = 0

    def head(self, message: str) -> None:
        self.differ(((*self.place, 0), message))

    def __call__(self, label: str, stored: int, expected: int) -> None:
        self.made += 1
        if stored != expected:
            message = f"{label}: stored {stored:,}, expected {expected:,}"
            self.differ(((*self.place, self.made), message))


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
            compare = _Compare(differ, (ORGANIZATION, position))

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
        for org_id, first in found.org_first.items():
            differ(
                (
                    (ORGANIZATION_UNKNOWN, first),
                    f"journal names organization {org_id}, which is not stored",
                )
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
    """Replay the whole journal, in the caller's transaction (its snapshot), and compare it
    with every stored balance. `workers`: how many processes check the chains on
    PostgreSQL (None: several when the journal is big, else this one)."""
    found = Found()
    organizations = Organizations(found)
    with gc_paused():
        if session.get_bind().dialect.name == "postgresql":
            await _postgresql(session, found, organizations, progress, workers)
        else:
            await session.run_sync(_one_pass, found, organizations, progress)
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


def _one_pass(
    session: Session,
    found: Found,
    organizations: Organizations,
    progress: Callable[[int], None] | None,
) -> None:
    """Every entry in id order, in this process (SQLite, or a small journal)."""
    connection = session.connection()
    # The details as stored (JSON text): each different one is decoded once (Chains.spell).
    columns = [
        sql_cast(_ENTRIES.c.details, Text).label("details")
        if name == "details"
        else _ENTRIES.c[name]
        for name in COLUMNS
    ]
    statement = select(*columns).order_by(_ENTRIES.c.id)
    rows = connection.execute(statement.execution_options(yield_per=10_000))
    chains = Chains(found, lambda row: row._mapping)
    org_rows: list[tuple[Any, ...]] = []

    def counted() -> Iterable[Any]:
        for count, row in enumerate(rows, 1):
            if row[3] is not None and (
                row[4] or row[5] or row[9] is not None or row[10] is not None
            ):
                org_rows.append((row[0], row[1], row[3], row[4], row[5], row[9], row[10]))
            if progress is not None and count % 10_000 == 0:
                progress(count)
            yield row

    chains.entries(counted())
    if progress is not None:
        progress(found.entries)
    organizations.entries(org_rows)
    users = select(*(_USERS.c[name] for name in USER_COLUMNS)).order_by(_USERS.c.id)
    chains.users(
        connection.execute(users.execution_options(yield_per=10_000)), _reservations(connection)
    )


def _reservations(connection: Any) -> dict[tuple[uuid.UUID, str], int]:
    """Open reservations' amounts per user and kind."""
    statement = (
        select(Reservation.user_id, Reservation.kind, func.sum(Reservation.amount))
        .where(Reservation.status == "open")
        .group_by(Reservation.user_id, Reservation.kind)
    )
    return {(user_id, kind): int(total) for user_id, kind, total in connection.execute(statement)}


# --- PostgreSQL, in parallel --------------------------------------------------------------

_ORG_ENTRIES = (
    "SELECT id, org_id, kind, capacity_delta, allocated_delta, capacity_after, allocated_after"
    " FROM journal_entries WHERE kind IS NOT NULL AND (capacity_delta <> 0"
    " OR allocated_delta <> 0 OR capacity_after IS NOT NULL OR allocated_after IS NOT NULL)"
    " ORDER BY id"
)


async def _postgresql(
    session: AsyncSession,
    found: Found,
    organizations: Organizations,
    progress: Callable[[int], None] | None,
    workers: int | None,
) -> None:
    span = (
        await session.execute(
            text("SELECT coalesce(max(id) - min(id) + 1, 0) FROM journal_entries")
        )
    ).scalar_one()
    if workers is None:
        workers = WORKERS if span >= PARALLEL_FROM else 1
    if workers <= 1:
        await session.run_sync(_one_pass, found, organizations, progress)
        return
    snapshot = (await session.execute(text("SELECT pg_export_snapshot()"))).scalar_one()
    bounds = await _bounds(session, workers)
    engine_url = session.get_bind().engine.url
    url = engine_url.set(drivername="postgresql").render_as_string(hide_password=False)
    parts = [(url, snapshot, bounds[i], bounds[i + 1], i == 0) for i in range(len(bounds) - 1)]
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=len(parts), mp_context=get_context("fork")) as pool:
        futures = [loop.run_in_executor(pool, _check_part, *part) for part in parts]
        # Meanwhile, here: the organizations' totals, from the entries that move them.
        org_rows = (await session.execute(text(_ORG_ENTRIES))).all()
        organizations.entries(org_rows)
        for part in await asyncio.gather(*futures):
            found.merge(part)
            if progress is not None:
                progress(found.entries)


async def _bounds(session: AsyncSession, workers: int) -> list[uuid.UUID | None]:
    """Ids splitting the users into `workers` ranges of about as many users: None, the
    first id of each range but the first, None."""
    count = (await session.execute(text("SELECT count(*) FROM users"))).scalar_one()
    bounds: list[uuid.UUID | None] = [None]
    for part in range(1, workers):
        offset = count * part // workers
        bound = (
            await session.execute(
                text("SELECT id FROM users ORDER BY id OFFSET :offset LIMIT 1"),
                {"offset": offset},
            )
        ).scalar()
        if bound is not None and bound not in bounds:
            bounds.append(bound)
    bounds.append(None)
    return bounds


def _range(column: str, low: uuid.UUID | None, high: uuid.UUID | None, nulls: bool) -> str:
    """The condition of a range of user ids ($1 and $2 its bounds, unused when None)."""
    conditions = []
    if low is not None:
        conditions.append(f"{column} >= $1::uuid")
    if high is not None:
        conditions.append(f"{column} < $2::uuid")
    where = " AND ".join(conditions) or f"{column} IS NOT NULL"
    return f"({where} OR {column} IS NULL)" if nulls else f"({where})"


def _check_part(
    url: str, snapshot: str, low: uuid.UUID | None, high: uuid.UUID | None, nulls: bool
) -> Found:
    """A worker: the chains of the users with ids in [low, high) (and, with `nulls`, the
    organizations' chains), with their stored users, in the snapshot `snapshot`."""
    with gc_paused():
        return asyncio.run(_part(url, snapshot, low, high, nulls))


async def _part(
    url: str, snapshot: str, low: uuid.UUID | None, high: uuid.UUID | None, nulls: bool
) -> Found:
    found = Found()
    chains = Chains(found, lambda row: cast(Mapping[str, Any], row))
    connection = await asyncpg.connect(url)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            arguments = [bound for bound in (low, high) if bound is not None]
            numbered = _numbered(low, high)
            entries = (
                f"SELECT {', '.join(COLUMNS)} FROM journal_entries"
                f" WHERE {numbered(_range('user_id', low, high, nulls))} ORDER BY id"
            )
            cursor = await connection.cursor(entries, *arguments)
            while rows := await cursor.fetch(FETCH):
                chains.entries(rows)
            reserved = {
                (user_id, kind): int(total)
                for user_id, kind, total in await connection.fetch(
                    "SELECT user_id, kind, sum(amount) FROM reservations WHERE status = 'open'"
                    f" AND {numbered(_range('user_id', low, high, False))}"
                    " GROUP BY user_id, kind",
                    *arguments,
                )
            }
            users = await connection.fetch(
                f"SELECT {', '.join(USER_COLUMNS)} FROM users"
                f" WHERE {numbered(_range('id', low, high, False))} ORDER BY id",
                *arguments,
            )
            chains.users(users, reserved)
    finally:
        await connection.close()
    # Plain UUIDs back to the caller (asyncpg's own would need asyncpg to be read back).
    found.org_first = {uuid.UUID(bytes=o.bytes): f for o, f in found.org_first.items()}
    found.org_last = {uuid.UUID(bytes=o.bytes): last for o, last in found.org_last.items()}
    return found


def _numbered(low: uuid.UUID | None, high: uuid.UUID | None) -> Callable[[str], str]:
    """$2 becomes $1 when there is no low bound (asyncpg numbers only what it is given)."""
    if low is None:
        return lambda condition: condition.replace("$2", "$1")
    return lambda condition: condition
