"""The journal's hash chains: an entry cannot be changed, removed or inserted quietly.

Each entry belongs to one chain: its user's, or, for an entry without a user, its
organization's. It stores the hash of the entry before it in that chain (`prev_hash`) and
its own `hash`, the SHA-256 of that previous hash and of everything the entry says. The
newest hash of each chain is also kept on the user or organization row
(`journal_head`), so removing the last entries of a chain shows too.

Why a chain per user rather than one per organization: every entry of a user is written
while that user's row is locked (metering) or while the whole organization is
(administration), so a user's chain grows one entry at a time without any further lock;
one chain per organization would make every metered request of an organization wait for
the one before it, on one row.

`verify` checks the chains by replaying them from the columns as the database driver gives
them (`Chains`, at the end), in processes of its own for a big journal (journal/verify.py):
each process reads its part of the journal with `check_sqlite_part` or
`check_postgresql_part`, with no more than this module and the database's driver.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tokenadmin import compact_json
from tokenadmin.journal.schemas import CHANGES
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    import asyncpg

# What an entry says, in a fixed order; its id is not part of it (the chain orders it).
CONTENT = (
    "org_id",
    "user_id",
    "purchase_id",
    "reservation_id",
    "created_at",
    "actor",
    "action",
    "kind",
    "amount",
    "reason",
    *CHANGES,
    "details",
)

Chain = tuple[str, uuid.UUID]  # ("user", user id) or ("organization", organization id)


def chain_of(entry: Mapping[Any, Any]) -> Chain:
    user_id = entry["user_id"]
    return ("user", user_id) if user_id is not None else ("organization", entry["org_id"])


def link(previous: str | None, entry: Mapping[Any, Any]) -> str:
    """The hash of `entry` after `previous` (None for the first entry of a chain)."""
    return link_encoded(previous, entry, details_json(entry["details"]))


def link_encoded(previous: str | None, entry: Mapping[Any, Any], details: str) -> str:
    """`link`, with the entry's details given already as `details_json` writes them (the
    same for the same details: `verify` encodes each distinct details once)."""
    # Spelled out rather than looped over CONTENT: verify runs this for every entry.
    global _last_time, _last_org
    # The entries written together share their moment and organization (the same
    # objects): each is spelled once for them all, not once an entry.
    created_at: datetime = entry["created_at"]
    last_time, created = _last_time
    if created_at is not last_time:
        created = _spelled_time(created_at)
        _last_time = (created_at, created)
    org_id = entry["org_id"]
    last_org, org = _last_org
    if org_id is not last_org:
        org = str(org_id)
        _last_org = (org_id, org)
    user_id, purchase_id, reservation_id = (
        entry["user_id"],
        entry["purchase_id"],
        entry["reservation_id"],
    )
    content = [
        previous or "",
        org,
        None if user_id is None else str(user_id),
        None if purchase_id is None else str(purchase_id),
        None if reservation_id is None else str(reservation_id),
        created,
        entry["actor"],
        entry["action"],
        entry["kind"],
        entry["amount"],
        entry["reason"],
        entry["capacity_delta"],
        entry["allocated_delta"],
        entry["allowance_delta"],
        entry["used_delta"],
        entry["reserved_delta"],
        entry["capacity_after"],
        entry["allocated_after"],
        entry["allowance_after"],
        entry["used_after"],
        entry["reserved_after"],
    ]
    # The JSON array of every field and the details, as one encoding of the whole list
    # would spell it: the list without its last item, then "," and the details, then "]".
    text = "".join(_encode(content, 0))
    return sha256(f"{text[:-1]},{details}]".encode()).hexdigest()


def _spelled_time(created_at: datetime) -> str:
    if created_at.tzinfo is not UTC:
        created_at = created_at.astimezone(UTC)
    # isoformat(timespec="microseconds"), spelled out: the keyword costs three times the
    # call (the fraction is only left out when it is 0).
    created = created_at.isoformat()
    if not created_at.microsecond:
        created = f"{created[:19]}.000000{created[19:]}"
    return created


# The last moment and organization spelled, with their spellings (`link_encoded`): each
# replaced as one tuple, so a reader never pairs one value with another's spelling.
_last_time: tuple[datetime | None, str] = (None, "")
_last_org: tuple[uuid.UUID | None, str] = (None, "")


def details_json(details: Any) -> str:
    """An entry's details as its hash spells them: JSON with sorted keys, no blanks."""
    return "".join(_encode(details, 0))


# Text as is (not as \u escapes).
_encode = compact_json.encoder(ensure_ascii=False)


# --- The chains replayed, as verify reads them (journal/verify.py) ----------------------
#
# Here rather than in verify.py: a process verify starts to read SQLite's chains imports
# this module and the standard library, not SQLAlchemy, the models and asyncpg (a third of
# a second of CPU in each).

# What the chains' replay reads of each entry (by position), as the driver gives it: the
# columns as stored, but for the numbers of the hashed text (`link`), which SQL spells
# as one cell as Python's encoder would, so each entry costs Python a few lookups, one
# format and one SHA-256 (see `Chains.entries`).
_ID, _ORG_ID, _USER_ID, _KIND = 0, 1, 2, 3
_DELTAS, _AFTERS = 4, 7  # allowance, used, reserved: deltas, then afters
_PURCHASE_ID, _RESERVATION_ID, _CREATED, _ACTOR, _ACTION, _AMOUNT, _REASON = range(10, 17)
_NUMBERS, _DETAILS, _PREV_HASH, _HASH = range(17, 21)


def entry_columns(dialect: str) -> list[str]:
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
    `entry_columns` in the driver's `cells`."""

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
        balances. The hashed text is `link`'s, put together from the spelled parts
        (tests/test_verify_scale.py holds it to `link`, byte for byte)."""
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
        """A stored hash as the next entry's hashed text begins with it (`link`: "" for
        none)."""
        if cell == self.cells.null:
            return '""'
        if cell.isalnum():
            return f'"{cell}"'
        return self.spell(cell)

    def spell(self, cell: Any) -> str:
        """A text cell (not NULL) as JSON; remembered, as actors, actions and reasons
        repeat (up to DETAILS_KEPT different ones)."""
        spelled = details_json(self.cells.value(cell))
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
        spelled = details_json(None if value is None else json.loads(value))
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
        compare = Compare(self.found.differences.append, (USER, user_id.int))
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


class Compare:
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


SQLITE_FETCH = 10_000  # rows per fetch (in verify's own process: per hand-off to aiosqlite)


def check_sqlite_part(path: str, low: str | None, high: str | None) -> Found:
    """A worker: the chains of the users with ids in [low, high) (as SQLite stores them,
    32 hex digits), with those users and their open reservations, in one read transaction
    on a connection of its own to the file `path`."""
    # The collector off, as tokenadmin.rows.gc_paused does (which would import SQLAlchemy).
    gc.disable()
    connection = sqlite3.connect(
        f"file:{quote(path)}?mode=ro", uri=True, timeout=30, isolation_level=None
    )
    try:
        connection.execute("BEGIN")
        return _sqlite_part(connection, low, high)
    finally:
        connection.close()
        gc.enable()


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
        f"SELECT {', '.join(entry_columns('sqlite'))} FROM journal_entries NOT INDEXED"
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


def _range(column: str, low: uuid.UUID | None, high: uuid.UUID | None, nulls: bool) -> str:
    """The condition of a range of user ids ($1 and $2 its bounds, unused when None)."""
    conditions = []
    if low is not None:
        conditions.append(f"{column} >= $1::uuid")
    if high is not None:
        conditions.append(f"{column} < $2::uuid")
    where = " AND ".join(conditions) or f"{column} IS NOT NULL"
    return f"({where} OR {column} IS NULL)" if nulls else f"({where})"


def check_postgresql_part(
    options: dict[str, Any],
    snapshot: str,
    low: uuid.UUID | None,
    high: uuid.UUID | None,
    nulls: bool,
) -> Found:
    """A worker: the chains of the users with ids in [low, high) (and, with `nulls`, the
    organizations' chains), with their stored users, in the snapshot `snapshot` (exported
    by verify's transaction)."""
    gc.disable()  # as check_sqlite_part
    try:
        return asyncio.run(_postgresql_part(options, snapshot, low, high, nulls))
    finally:
        gc.enable()


async def _postgresql_part(
    options: dict[str, Any],
    snapshot: str,
    low: uuid.UUID | None,
    high: uuid.UUID | None,
    nulls: bool,
) -> Found:
    import asyncpg  # here: a SQLite reader imports this module too

    connection = await asyncpg.connect(**options)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await connection.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            return await replay_postgresql(connection, low, high, nulls, None)
    finally:
        await connection.close()


async def replay_postgresql(
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
        f"SELECT {', '.join(entry_columns('postgresql'))} FROM journal_entries"
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
