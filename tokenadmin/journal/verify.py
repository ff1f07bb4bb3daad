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
text, the sqlite3 cursor's tuples (see `Chains.entries`).

Each difference carries the place it has in the report `verify` has always given (entries
in id order, each entry's chain before its balances; then organizations; then users), so
the report is the same, in the same order, however the work was split.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from hashlib import sha256
from multiprocessing import get_context
from typing import Any, cast
from urllib.parse import quote

import asyncpg
from sqlalchemy import Table, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tokenadmin.journal import chain, repository
from tokenadmin.journal.schemas import CHANGES
from tokenadmin.models import JournalEntry, Reservation, User
from tokenadmin.rows import gc_paused
from tokenadmin.tokens import Kind

# What the chains' replay reads of each entry (by position), as the driver gives it: the
# columns as stored, but for the numbers of the hashed text (chain.link), which SQL spells
# as one cell as Python's encoder would, so each entry costs Python a few lookups, one
# format and one SHA-256 (see `Chains.entries`).
_ID, _ORG_ID, _USER_ID, _KIND = 0, 1, 2, 3
_DELTAS, _AFTERS = 4, 7  # allowance, used, reserved: deltas, then afters
_PURCHASE_ID, _RESERVATION_ID, _CREATED, _ACTOR, _ACTION, _AMOUNT, _REASON = range(10, 17)
_NUMBERS, _DETAILS, _PREV_HASH, _HASH = range(17, 21)


def _entry_columns(dialect: str) -> list[str]:
    """The columns of the replay, in that order, in `dialect`'s SQL."""
    postgres = dialect == "postgresql"

    def number(column: str) -> str:
        return f"coalesce({column}::text, 'null')" if postgres else f"coalesce({column}, 'null')"

    changes = [number(column) for column in CHANGES]

    balances = ("allowance", "used", "reserved")
    return [
        "id",
        "org_id",
        "user_id",
        "kind",
        *(f"{name}_delta" for name in balances),
        *(f"{name}_after" for name in balances),
        "purchase_id",
        "reservation_id",
        # As SQLite stores it (UTCDateTime): naive UTC, six decimals.
        "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
        if postgres
        else "created_at",
        "actor",
        "action",
        number("amount"),
        "reason",
        # SQLite: one printf rather than nineteen concatenations (a quarter of its reading).
        " || ',' || ".join(changes)
        if postgres
        else f"printf('{','.join(['%s'] * len(changes))}', {', '.join(changes)})",
        "details::text" if postgres else "CAST(details AS TEXT)",  # SQLite: JSON is NUMERIC
        "prev_hash",
        "hash",
    ]


@dataclass(frozen=True)
class Cells:
    """How a driver gives the replay's cells: what stands for NULL and for the number 0, a
    text cell's value, a uuid cell's str(uuid.UUID), and a UUID's cell."""

    null: str | None
    zero: str | int
    value: Callable[[Any], Any]
    uuid_text: Callable[[Any], str]
    cell_of: Callable[[uuid.UUID], Any]


def _copied(cell: str) -> str | None:
    """A cell of PostgreSQL's COPY text format as the value it stands for (COPY writes
    NULL as a backslash and N, and puts a backslash before a backslash or a control
    character it spells)."""
    if cell == "\\N":
        return None
    if "\\" not in cell:
        return cell
    return re.sub(r"\\(.)", lambda match: _COPY_ESCAPES.get(match[1], match[1]), cell)


_COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _dashed(cell: str) -> str:
    """SQLite's Uuid (32 hex digits) as str(uuid.UUID) spells it."""
    return str(uuid.UUID(cell))


POSTGRESQL_CELLS = Cells("\\N", "0", _copied, str, str)  # COPY's text format
SQLITE_CELLS = Cells(None, 0, lambda cell: cell, _dashed, lambda value: value.hex)

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
"""Entries from which the journal is checked by several processes: below it,
starting them costs more than it saves."""
WORKERS = min(4, max(2, os.cpu_count() or 2))
DETAILS_KEPT = 10_000
IDS_KEPT = 200_000

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
    balances after each entry. Entries come in id order within each chain, as rows of
    `_entry_columns` in the driver's `cells`."""

    def __init__(self, found: Found, cells: Cells) -> None:
        self.found = found
        self.cells = cells
        self.texts: dict[Any, str] = {cells.null: "null"}  # a text cell -> its JSON
        self.ids: dict[Any, str] = {cells.null: "null"}  # a uuid cell -> its JSON
        self.details: dict[Any, str] = {}  # stored details -> as the hash spells them
        # Each chain's last entry: its id, its hash and that hash as the next entry's hashed
        # text begins with it.
        self.user_last: dict[Any, tuple[Any, Any, str]] = {}
        self.org_last: dict[Any, tuple[Any, Any, str]] = {}
        self.totals: dict[tuple[Any, Any], list[int]] = {}
        self.org_first: dict[Any, int] = {}
        self.user_first: dict[Any, int] = {}

    def entries(self, rows: Iterable[Sequence[Any]]) -> None:
        """Check each entry's place in its chain and its hash, and replay its user's
        balances. The hashed text is `chain.link`'s, put together from the spelled parts
        (tests/test_verify_scale.py holds it to `chain.link`, byte for byte)."""
        found, differ = self.found, self.found.differences.append
        null, zero = self.cells.null, self.cells.zero
        texts, ids, details = self.texts, self.ids, self.details
        spell, spell_id, spell_details = self.spell, self.spell_id, self.spell_details
        user_last, org_last, totals = self.user_last, self.org_last, self.totals
        org_first, user_first = self.org_first, self.user_first
        start = (None, null, '""')
        count = 0
        for row in rows:
            count += 1
            entry_id, org_id, user_id, kind = row[_ID], row[_ORG_ID], row[_USER_ID], row[_KIND]
            lasts, owner = (org_last, org_id) if user_id == null else (user_last, user_id)
            last_id, last_hash, previous = lasts.get(owner, start)
            stored = row[_HASH]
            checked = False
            if row[_PREV_HASH] != last_hash:
                after = "its start" if last_id is None else f"entry {last_id}"
                differ(
                    (
                        (ENTRY, int(entry_id), CHAIN),
                        f"entry {entry_id}: the journal of"
                        f" {'organization' if user_id == null else 'user'}"
                        f" {self.cells.uuid_text(owner)} does not continue from {after}:"
                        " an entry was removed or inserted there",
                    )
                )
            else:
                created = row[_CREATED]
                if len(created) != 26:
                    created = _as_stored(created)
                hashed = (
                    f"[{previous},{ids.get(org_id) or spell_id(org_id)},"
                    f"{ids.get(user_id) or spell_id(user_id)},"
                    f"{ids.get(row[_PURCHASE_ID]) or spell_id(row[_PURCHASE_ID])},"
                    f"{ids.get(row[_RESERVATION_ID]) or spell_id(row[_RESERVATION_ID])},"
                    f'"{created[:10]}T{created[11:]}+00:00",'
                    f"{texts.get(row[_ACTOR]) or spell(row[_ACTOR])},"
                    f"{texts.get(row[_ACTION]) or spell(row[_ACTION])},"
                    f"{texts.get(kind) or spell(kind)},{row[_AMOUNT]},"
                    f"{texts.get(row[_REASON]) or spell(row[_REASON])},{row[_NUMBERS]},"
                    f"{details.get(row[_DETAILS]) or spell_details(row[_DETAILS])}]"
                )
                checked = stored == sha256(hashed.encode()).hexdigest()
                if not checked:
                    differ(
                        (
                            (ENTRY, int(entry_id), CHAIN),
                            f"entry {entry_id}: changed since it was written (it no longer"
                            " matches its hash)",
                        )
                    )
            # The next entry of the chain hashes this one's hash first: a hash just checked
            # is hex digits, with nothing to escape (in JSON or in COPY).
            lasts[owner] = (entry_id, stored, f'"{stored}"' if checked else self.spell_hash(stored))
            if kind == null:
                continue
            if org_id not in org_first:
                org_first[org_id] = int(entry_id)
            if user_id == null:
                continue
            replay = totals.get((user_id, kind))
            if replay is None:
                replay = totals[(user_id, kind)] = [0, 0, 0]
                user_first.setdefault(user_id, int(entry_id))
            allowance, used, reserved = row[_DELTAS : _DELTAS + 3]
            if allowance != zero:  # most entries move one balance: int() of the others skipped
                replay[0] += int(allowance)
            if used != zero:
                replay[1] += int(used)
            if reserved != zero:
                replay[2] += int(reserved)
            allowance, used, reserved = row[_AFTERS : _AFTERS + 3]
            if (
                (allowance != null and int(allowance) != replay[0])
                or (used != null and int(used) != replay[1])
                or (reserved != null and int(reserved) != replay[2])
            ):
                self.differ_after(row, replay)
        found.entries += count

    def differ_after(self, row: Sequence[Any], replay: list[int]) -> None:
        """Name each balance after `row` that differs from the replay up to it."""
        entry_id, null = row[_ID], self.cells.null
        for index, (name, place) in enumerate(USER_BALANCES):
            after_value = row[_AFTERS + index]
            if after_value != null and int(after_value) != replay[index]:
                self.found.differences.append(
                    (
                        (ENTRY, int(entry_id), place),
                        f"entry {entry_id}: {name}_after {after_value}"
                        f" != replay {replay[index]}"
                        f" (user {self.cells.uuid_text(row[_USER_ID])}, {row[_KIND]})",
                    )
                )

    def spell_hash(self, cell: Any) -> str:
        """A stored hash as the next entry's hashed text begins with it (chain.link: "" for
        none)."""
        if cell == self.cells.null:
            return '""'
        if cell.isalnum():
            return f'"{cell}"'
        return self.spell(cell)

    def spell(self, cell: Any) -> str:
        """A text cell (not NULL) as JSON; remembered, as actors, actions and reasons
        repeat (up to DETAILS_KEPT different ones)."""
        spelled = chain.details_json(self.cells.value(cell))
        self.texts[cell] = spelled
        if len(self.texts) > DETAILS_KEPT:
            self.texts = {self.cells.null: "null"}
        return spelled

    def spell_id(self, cell: Any) -> str:
        """A uuid cell (not NULL) as JSON; remembered, as users have many entries (up to
        IDS_KEPT different ones)."""
        spelled = f'"{self.cells.uuid_text(cell)}"'
        self.ids[cell] = spelled
        if len(self.ids) > IDS_KEPT:
            self.ids = {self.cells.null: "null"}
        return spelled

    def spell_details(self, stored: Any) -> str:
        """Details as stored (JSON text, or None) as the hash spells them; remembered, as
        entries often say the same (up to DETAILS_KEPT different ones)."""
        value = self.cells.value(stored)
        spelled = chain.details_json(None if value is None else json.loads(value))
        if len(self.details) >= DETAILS_KEPT:
            self.details.clear()
        self.details[stored] = spelled
        return spelled

    def finish(self) -> None:
        """The organizations' chains and first entries, keyed by UUID and with their
        stored values, for the caller to merge and compare."""
        value = self.cells.value
        self.found.org_last = {
            uuid.UUID(org_id): (int(last_id), value(last_hash))
            for org_id, (last_id, last_hash, _) in self.org_last.items()
        }
        self.found.org_first = {
            uuid.UUID(org_id): first for org_id, first in self.org_first.items()
        }

    def users(self, rows: Iterable[Any], reserved: Mapping[tuple[uuid.UUID, str], int]) -> None:
        """Compare every stored user (rows of USER_COLUMNS, in id order) with the replay;
        then name the users the journal names but who are not stored."""
        found, totals, user_last = self.found, self.totals, self.user_last
        null, value, cell_of = self.cells.null, self.cells.value, self.cells.cell_of
        inference, training = KINDS
        nothing = [0, 0, 0]
        for row in rows:
            user_id = row[0]
            cell = cell_of(user_id)
            found.users += 1
            last = user_last.get(cell, (None, null, ""))
            replays = (
                totals.pop((cell, inference), None) or nothing,
                totals.pop((cell, training), None) or nothing,
            )
            # Nearly every user agrees in everything: the report's words are made only for
            # one who does not (they cost more than the comparisons).
            if (
                row[8] != value(last[1])
                or row[2] != replays[0][0]
                or row[3] != replays[1][0]
                or row[4] != replays[0][1]
                or row[5] != replays[1][1]
                or row[6] != replays[0][2]
                or row[7] != replays[1][2]
                or row[6] != reserved.get((user_id, inference), 0)
                or row[7] != reserved.get((user_id, training), 0)
            ):
                self.differ_user(row, last, replays, reserved)
            self.user_first.pop(cell, None)
        for cell, first in self.user_first.items():
            found.differences.append(
                (
                    (USER_UNKNOWN, first),
                    f"journal names user {self.cells.uuid_text(cell)}, who is not stored",
                )
            )

    def differ_user(
        self,
        row: Sequence[Any],
        last: tuple[Any, Any, str],
        replays: Sequence[list[int]],
        reserved: Mapping[tuple[uuid.UUID, str], int],
    ) -> None:
        """Name each of a stored user's values that differs from the replay."""
        user_id, email = row[0], row[1]
        compare = _Compare(self.found.differences.append, (USER, user_id.int))
        last_id, last_hash, _ = last
        if row[8] != self.cells.value(last_hash):
            newest = "no entry" if last_id is None else f"entry {last_id}"
            compare.head(
                f"the journal of user {user_id} ends at {newest}, which is not its"
                " newest entry: entries were removed from its end"
            )
        for index, kind in enumerate(KINDS):
            label = f"user {user_id} ({email}) {kind}"
            replay = replays[index]
            stored_reserved = row[6 + index]
            compare(f"{label} allowance", row[2 + index], replay[0])
            compare(f"{label} used", row[4 + index], replay[1])
            compare(f"{label} reserved", stored_reserved, replay[2])
            compare(
                f"{label} reserved vs open reservations",
                stored_reserved,
                reserved.get((user_id, kind), 0),
            )


def _as_stored(created: str) -> str:
    """A time SQLite stores in another form than UTCDateTime writes (no fraction, say), in
    that form, as SQLAlchemy would read it."""
    return datetime.fromisoformat(created).strftime("%Y-%m-%d %H:%M:%S.%f")


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
SQLITE_FETCH = 10_000  # rows per hand-off to aiosqlite's thread


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
            f"SELECT {', '.join(_entry_columns('sqlite'))} FROM journal_entries ORDER BY id"
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
        span = (
            await session.execute(
                text("SELECT coalesce(max(id) - min(id) + 1, 0) FROM journal_entries")
            )
        ).scalar_one()
        workers = WORKERS if span >= PARALLEL_FROM else 1
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
            loop.run_in_executor(pool, _check_sqlite_part, path, bounds[i], bounds[i + 1])
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
            f"SELECT {', '.join(_entry_columns('sqlite'))} FROM journal_entries"
            " WHERE user_id IS NULL ORDER BY id"
        )
        chains.entries(cursor.fetchall())
    finally:
        cursor.close()
    chains.finish()
    organizations.entries(connection.execute(_ORG_ENTRIES))


def _check_sqlite_part(path: str, low: str | None, high: str | None) -> Found:
    """A worker: the chains of the users with ids in [low, high) (as SQLite stores them,
    32 hex digits), with those users and their open reservations, in one read transaction
    on a connection of its own to the file `path`."""
    with gc_paused():
        connection = sqlite3.connect(
            f"file:{quote(path)}?mode=ro", uri=True, timeout=30, isolation_level=None
        )
        try:
            connection.execute("BEGIN")
            return _sqlite_part(connection, low, high)
        finally:
            connection.close()


def _sqlite_part(connection: sqlite3.Connection, low: str | None, high: str | None) -> Found:
    found = Found()
    chains = Chains(found, SQLITE_CELLS)
    conditions = [f"{op} ?" for op, bound in ((">=", low), ("<", high)) if bound is not None]
    arguments = [bound for bound in (low, high) if bound is not None]

    def within(column: str) -> str:
        return " AND ".join(f"{column} {condition}" for condition in conditions) or "1"

    # NOT INDEXED: the table in id order (its rowid), every page read once, rather than the
    # user index's order, which is not the chains' and would need a sort.
    cursor = connection.execute(
        f"SELECT {', '.join(_entry_columns('sqlite'))} FROM journal_entries NOT INDEXED"
        f" WHERE user_id IS NOT NULL AND {within('user_id')} ORDER BY id",
        arguments,
    )
    while rows := cursor.fetchmany(SQLITE_FETCH):
        chains.entries(rows)
    chains.finish()
    reserved = {
        (uuid.UUID(user_id), kind): int(total)
        for user_id, kind, total in connection.execute(
            "SELECT user_id, kind, sum(amount) FROM reservations"
            f" WHERE status = 'open' AND {within('user_id')} GROUP BY user_id, kind",
            arguments,
        )
    }
    users = connection.execute(
        f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE {within('id')} ORDER BY id",
        arguments,
    )
    chains.users(((uuid.UUID(row[0]), *row[1:]) for row in users), reserved)
    return found


# --- PostgreSQL, in parallel --------------------------------------------------------------


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
        # This process, on the session's own connection (its transaction and snapshot).
        raw = await (await session.connection()).get_raw_connection()
        found.merge(await _replay(raw.driver_connection, None, None, True, progress))
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
        futures = [loop.run_in_executor(pool, _check_part, *part) for part in parts]
        # Meanwhile, here: the organizations' totals, from the entries that move them.
        organizations.entries((await session.execute(_ORG_ENTRIES)).all())
        for part in await asyncio.gather(*futures):
            found.merge(part)
            if progress is not None:
                progress(found.entries)


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


def _range(column: str, low: uuid.UUID | None, high: uuid.UUID | None, nulls: bool) -> str:
    """The condition of a range of user ids ($1 and $2 its bounds, unused when None)."""
    conditions = []
    if low is not None:
        conditions.append(f"{column} >= $1::uuid")
    if high is not None:
        conditions.append(f"{column} < $2::uuid")
    where = " AND ".join(conditions) or f"{column} IS NOT NULL"
    return f"({where} OR {column} IS NULL)" if nulls else f"({where})"


def _connect_options(session: AsyncSession) -> dict[str, Any]:
    """asyncpg.connect's arguments for the session's database, as SQLAlchemy's asyncpg
    dialect makes them from its URL: its query (`?ssl=require`, say) becomes the arguments
    asyncpg takes, which a DSN of the same URL would pass to the server as settings."""
    engine = session.get_bind().engine
    _, options = engine.dialect.create_connect_args(engine.url)
    for dialect_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
        options.pop(dialect_only, None)
    return cast(dict[str, Any], options)


def _check_part(
    options: dict[str, Any],
    snapshot: str,
    low: uuid.UUID | None,
    high: uuid.UUID | None,
    nulls: bool,
) -> Found:
    """A worker: the chains of the users with ids in [low, high) (and, with `nulls`, the
    organizations' chains), with their stored users, in the snapshot `snapshot`."""
    with gc_paused():
        return asyncio.run(_part(options, snapshot, low, high, nulls))


async def _part(
    options: dict[str, Any],
    snapshot: str,
    low: uuid.UUID | None,
    high: uuid.UUID | None,
    nulls: bool,
) -> Found:
    connection = await asyncpg.connect(**options)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            return await _replay(connection, low, high, nulls, None)
    finally:
        await connection.close()


async def _replay(
    connection: asyncpg.Connection,
    low: uuid.UUID | None,
    high: uuid.UUID | None,
    nulls: bool,
    progress: Callable[[int], None] | None,
) -> Found:
    """The chains of the users with ids in [low, high) (and, with `nulls`, the
    organizations'), and those users, read on `connection` in its transaction. The entries
    come as COPY's text: no driver decoding of each row into a record."""
    found = Found()
    chains = Chains(found, POSTGRESQL_CELLS)
    arguments = [bound for bound in (low, high) if bound is not None]
    numbered = _numbered(low, high)
    entries = (
        f"SELECT {', '.join(_entry_columns('postgresql'))} FROM journal_entries"
        f" WHERE {numbered(_range('user_id', low, high, nulls))} ORDER BY id"
    )
    tail = b""

    async def take(data: bytes) -> None:
        nonlocal tail
        data = tail + data
        end = data.rfind(b"\n") + 1
        tail = data[end:]
        if end:
            chains.entries(line.split("\t") for line in data[: end - 1].decode().split("\n"))
            if progress is not None:
                progress(found.entries)

    await connection.copy_from_query(entries, *arguments, output=take, format="text")
    chains.finish()
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
    return found


def _numbered(low: uuid.UUID | None, high: uuid.UUID | None) -> Callable[[str], str]:
    """$2 becomes $1 when there is no low bound (asyncpg numbers only what it is given)."""
    if low is None:
        return lambda condition: condition.replace("$2", "$1")
    return lambda condition: condition
