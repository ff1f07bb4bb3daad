"""The metering engine: a group of an organization's metering operations decided as a set.

`service.meter` decides a group through the ORM, a dozen statements or more per group.
The engine does the same work with plain rows, by the same rules, under the same locks
taken in the same order, in three statements on PostgreSQL (besides BEGIN and COMMIT; a
group that commits or releases reservations sends one more):

1. one statement takes the organization's metering lock (shared), checks that the
   caller's key is live, probes the group's idempotency keys one by one on their index and
   claims them (`database.lock_organization`, `idempotency.find` and `claim`);
2. one statement locks the named users of the organization (and the owners of the
   reservations named) in id order, FOR UPDATE, and reads them with their organization,
   journal heads included, then takes as many journal ids as the group has operations
   (one entry each at most); a group that commits or releases reservations then locks
   them. A batch's transactions (`skip_locked`) skip the users another transaction has
   locked, and leave their operations to the next (`service.run`): two processes'
   batches name some of the same users, and waiting for one of them would keep the rest
   locked meanwhile, so the batches would run one after the other;
3. Python decides each operation in order (`service._debit`'s and `service._close`'s
   rules: unknown user or reservation, deactivated, allowance, what the organization has
   left where its capacity binds, closed reservation, thresholds crossed), chains each
   user's journal entries from the head it read and gives them their ids in order;
4. one statement writes the users' counters and heads, the reservations made and closed,
   the journal entries and the idempotency records (data-modifying CTEs over arrays).

Where the organization's capacity binds (SPEC rule 3), one more statement, after the
users and reservations are locked, locks the organization's row and reads its running
totals of the period's usage (`Organization.counted_usage`; `service` locks in the same
order): the group is decided against what they leave, and step 4 adds what it changed to
them. Every metering transaction of such an organization so waits for the one before it
on that row, as every transaction of one user waits on the user's.

On SQLite the same statements, one per step and table, are sent on sqlite3's connection
in aiosqlite's thread (usage/sqlite_raw.py), in two hand-offs to that thread per group
instead of one per statement: the first checks the key, reads the stored answers of the
keys, the users and reservations the operations left to apply name, and the journal's
last id (the writer lock, held since BEGIN IMMEDIATE, stands for the row locks); the
entries take the ids after it and the group is answered on the event loop; the second
writes the group, one executemany per table.

The answers are given after the commit, as before.

The engine takes a group when its caller is an organization's key and every operation is
usage or a reservation with its tokens given, or a commit or release (`takes`). Anything
else goes to `service.meter` (`fallback`), in the same transaction and before anything
is written, so its answers are the ORM path's own:
- expiries (the sweeper), usage charged at a model's rates, and operator (platform)
  callers, whose organization is known only from the users named;
- an organization due for upkeep (a purchase expired, a new period), or whose capacity
  binds while its running totals are not kept yet (the ORM path sums the users once and
  starts them);
- a group naming a user whose counters belong to an earlier period (the reset is
  journaled first), or naming no user of the organization at all;
- usage or a reservation that does not fit while the user holds reservations (overdue
  ones expire first), and a commit or release of a reservation past its expiry.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import cache, partial
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Column, Table, Uuid
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import metrics
from tokenadmin.act import Act
from tokenadmin.database import Retry, as_sqlalchemy_raises, lock_key
from tokenadmin.errors import (
    Conflict,
    InsufficientTokens,
    NotFound,
    ReservationClosed,
    ReservationExpired,
    TokenAdminError,
    Unauthenticated,
)
from tokenadmin.events import service as events
from tokenadmin.idempotency import service as idempotency
from tokenadmin.journal import chain
from tokenadmin.journal.service import Entry
from tokenadmin.models import (
    IdempotencyRecord,
    JournalEntry,
    Organization,
    Reservation,
    User,
)
from tokenadmin.tokens import Kind, current_period
from tokenadmin.usage import service, sqlite_raw

USERS = cast(Table, User.__table__)
ORGANIZATIONS = cast(Table, Organization.__table__)
JOURNAL = cast(Table, JournalEntry.__table__)
RECORDS = cast(Table, IdempotencyRecord.__table__)
RESERVATIONS = cast(Table, Reservation.__table__)
ACTIVITY_RESOLUTION = timedelta(minutes=1)  # as service.ACTIVITY_RESOLUTION

Fallback = Callable[[AsyncSession], Awaitable[list[idempotency.Answer]]]


class _Fallback(Exception):
    """The group needs the ORM path (see the module's docstring); nothing was written."""


@dataclass(slots=True)
class _User:
    """A locked user's row, as metering reads and changes it."""

    id: uuid.UUID
    email: str
    name: str
    status: str
    max_tokens: int
    max_train_tokens: int
    inference_used: int
    training_used: int
    inference_reserved: int
    training_reserved: int
    period_start: datetime
    last_activity_at: datetime | None
    journal_head: str | None
    changed: bool = False
    active_changed: bool = False  # last_activity_at moved (SQLite writes it only then)

    def allowance(self, kind: Kind) -> int:
        return self.max_tokens if kind is Kind.inference else self.max_train_tokens

    def used(self, kind: Kind) -> int:
        return self.inference_used if kind is Kind.inference else self.training_used

    def reserved(self, kind: Kind) -> int:
        return self.inference_reserved if kind is Kind.inference else self.training_reserved

    def balance(self, kind: Kind) -> tuple[int, int, int]:
        """The allowance, used and reserved of a kind in one look: what deciding an
        operation reads, up to five times."""
        if kind is Kind.inference:
            return self.max_tokens, self.inference_used, self.inference_reserved
        return self.max_train_tokens, self.training_used, self.training_reserved

    def used_in(self, kind: Kind, period_start: datetime) -> int:
        return self.used(kind) if self.period_start == period_start else 0

    def remaining(self, kind: Kind) -> int:
        # Only users whose counters are of the current period are decided here.
        return self.allowance(kind) - self.used(kind) - self.reserved(kind)

    def add_used(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.inference_used += delta
        else:
            self.training_used += delta

    def add_reserved(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.inference_reserved += delta
        else:
            self.training_reserved += delta


@dataclass(slots=True)
class _Reservation:
    """A reservation's row: read locked, or made by this group (`new`)."""

    id: uuid.UUID
    user_id: uuid.UUID
    kind: str
    amount: int
    status: str
    committed_amount: int | None
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None
    details: dict[str, Any] | None
    new: bool = False


@dataclass(frozen=True, slots=True)
class _Org:
    id: uuid.UUID
    period: str
    time_zone: str
    period_start: datetime
    next_expiry_at: datetime | None
    capacity_inference: int
    capacity_training: int
    allocated_inference: int
    allocated_training: int
    alert_thresholds: list[int]
    # Rule 3's running totals (`Organization.counted_usage`), as this read found them: on
    # PostgreSQL read again under the row's lock where the capacity binds (`_lock_totals`).
    used_inference: int | None
    reserved_inference: int | None
    used_training: int | None
    reserved_training: int | None

    def binds(self) -> bool:
        """Whether rule 3 binds for either kind (`Organization.binds`)."""
        return (
            self.allocated_inference > self.capacity_inference
            or self.allocated_training > self.capacity_training
        )

    def totals(self) -> _Totals | None:
        """Rule 3's running totals where the capacity binds; None where they are not kept."""
        counted = (self.used_inference, self.reserved_inference)
        more = (self.used_training, self.reserved_training)
        if None in counted or None in more:
            return None
        capacity = {Kind.inference: self.capacity_inference, Kind.training: self.capacity_training}
        allocated = {
            Kind.inference: self.allocated_inference,
            Kind.training: self.allocated_training,
        }
        return _Totals(
            {kind: capacity[kind] for kind in Kind if allocated[kind] > capacity[kind]},
            {Kind.inference: cast(int, counted[0]), Kind.training: cast(int, more[0])},
            {Kind.inference: cast(int, counted[1]), Kind.training: cast(int, more[1])},
        )


@dataclass(slots=True)
class _Totals:
    """A binding organization's running totals (`Organization.counted_usage`), read under
    its row's lock, as the group's operations change them, and what the organization has
    left of each kind whose capacity binds (`service.available`)."""

    capacity: dict[Kind, int]  # of the kinds whose capacity binds
    used: dict[Kind, int]
    reserved: dict[Kind, int]
    added: dict[Kind, tuple[int, int]] = field(default_factory=dict)  # (used, reserved)

    def room(self, kind: Kind) -> int | None:
        capacity = self.capacity.get(kind)
        return None if capacity is None else capacity - self.used[kind] - self.reserved[kind]

    def add(self, kind: Kind, used: int, reserved: int) -> None:
        self.used[kind] += used
        self.reserved[kind] += reserved
        was_used, was_reserved = self.added.get(kind, (0, 0))
        self.added[kind] = (was_used + used, was_reserved + reserved)


def takes(caller: service.Caller, operations: Sequence[service.Operation]) -> bool:
    """Whether the engine takes this group (else `service.meter` does, as always)."""
    if caller.org_id is None:
        return False
    for op in operations:
        if op.action in ("usage", "reserve"):
            if op.tokens is None or op.user is None or op.kind is None:
                return False
        elif op.action not in ("commit", "release") or op.reservation_id is None:
            return False
    return True


async def meter_group(
    session: AsyncSession,
    *,
    act: Act,
    caller: service.Caller,
    operations: Sequence[service.Operation],
    requests: Sequence[idempotency.Keyed | None],
    answer: idempotency.Render[service.Metered],
    default_ttl: int,
    idempotency_ttl: timedelta,
    fallback: Fallback,
    skip_locked: bool = False,
) -> list[idempotency.Answer | None]:
    """Meter a group (`takes`) in this transaction; `fallback` meters it if the engine
    can't (the module's docstring says when).

    With `skip_locked`, on PostgreSQL, the operations of users another transaction has
    locked are left for a later transaction, unanswered (None) and unrecorded, so this one
    never waits on a user's row lock while some of its users are free (`service.run`);
    where the organization's capacity binds, it still waits for the organization's row,
    as every transaction of that organization does."""
    postgres = session.get_bind().dialect.name == "postgresql"
    raw = await _Raw.of(session) if postgres else None
    lite = None if postgres else await sqlite_raw.Connection.of(session)
    assert caller.org_id is not None
    org_id = caller.org_id
    scope = caller.idempotency_scope
    keys = list(dict.fromkeys(r.key for r in requests if r is not None))
    group: idempotency.Group[service.Metered] | None
    read: _Read | None = None
    if raw is not None:
        live, busy, stored = await _begin_postgres(raw, caller, org_id, keys)
        group = idempotency.Group.sort(requests, stored)
        group.mark_busy(busy & group.first.keys())
    else:
        assert lite is not None
        live, group, read = await lite.run(
            _begin_sqlite, caller, org_id, keys, requests, operations
        )
    if not live or group is None:
        revoked = idempotency.refused(_revoked())
        return [revoked] * len(operations)
    try:
        chosen = [operations[i] for i in group.todo]
        decided = await _decide(
            session, raw, act, org_id, chosen, default_ttl, read, skip=skip_locked
        )
    except _Fallback:
        return list(await fallback(session))
    if decided.deferred:
        group.defer([group.todo[index] for index in decided.deferred])
    changed = [user for user in decided.users if user.changed]
    reservations, entries = decided.reservations, decided.entries
    _take_ids(entries, decided.ids)
    # Answered once the entries have their ids (the answers name them), here on the event
    # loop, not in aiosqlite's thread: `answer` is the caller's.
    group.settle(decided.outcomes, answer)
    final, records = group.finish(scope, act.now, idempotency_ttl)
    try:
        write = (org_id, changed, reservations, entries, records, decided.totals)
        if raw is not None:
            await _write_postgres(raw, *write)
        else:
            assert lite is not None
            await lite.run(_write_sqlite, *write)
    except IntegrityError as error:
        # Only a key another transaction stored first is worth running again; any other
        # constraint (an allowance's CHECK) is a fault, raised as such.
        if "idempotency_records" not in str(error.orig):
            raise
        raise Retry("an idempotency key was stored by another transaction first") from error
    for action, kind, tokens, refusal in decided.counted:
        metrics.metered(session, action, org_id, kind, tokens, refusal)
    return final


def _revoked() -> TokenAdminError:
    return Unauthenticated("The API key is not valid or was revoked.")


# --- the PostgreSQL connection ----------------------------------------------------------


_PARAMETER = re.compile(r"(?<!:):(\w+)")  # not a cast (::text)


@cache
def _numbered(statement: str) -> tuple[str, tuple[str, ...]]:
    """A statement with named parameters (`:org`) as asyncpg takes it ($1), and the names
    in their numbers' order (a name used twice is one number)."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match[1], len(names) + 1)}"

    return _PARAMETER.sub(number, statement), tuple(names)


@dataclass(frozen=True, slots=True)
class _Raw:
    """The asyncpg connection of a PostgreSQL transaction.

    The engine's statements go to asyncpg directly: each is prepared once per connection
    (asyncpg's statement cache), its arrays are bound as they are and its rows read as
    Records, where SQLAlchemy would compile, process each bound value and wrap each row,
    which cost as much CPU per group as the engine's own deciding. The transaction stays
    the session's: it commits or rolls back with it, and a failure is raised as SQLAlchemy
    raises it (`DBAPIError`), so `Database.write` retries, or answers 503, as before."""

    adapted: Any  # SQLAlchemy's adapter of the asyncpg connection
    session: AsyncSession

    @classmethod
    async def of(cls, session: AsyncSession) -> _Raw:
        # Once checked out, the pooled connection is at hand without I/O: read as it is,
        # not through `get_raw_connection`, which spawns a greenlet to read it (as
        # `sqlite_raw.Connection.of`).
        connection = (await session.connection()).sync_connection
        assert connection is not None
        adapted: Any = connection.connection.dbapi_connection
        raw = cls(adapted, session)
        # The pool began the transaction as it gave the connection out (`database`'s
        # `_begin_on_checkout`); should it not have, the adapter would begin it on its
        # first statement, and this is it. A BEGIN that fails (say, the database went down
        # since the connection was pooled) is raised as SQLAlchemy raises it: 503.
        if adapted._transaction is None:
            try:
                await adapted._start_transaction()
            except Exception as error:
                raise raw._wrapped(error, "BEGIN") from error
        return raw

    async def fetch(self, statement: str, parameters: dict[str, Any]) -> list[Any]:
        sql, names = _numbered(statement)
        values = [parameters[name] for name in names]
        try:
            return cast(list[Any], await self.adapted.driver_connection.fetch(sql, *values))
        except Exception as error:
            raise self._wrapped(error, sql) from error

    def _wrapped(self, error: Exception, sql: str) -> BaseException:
        return as_sqlalchemy_raises(self.adapted, self.session.get_bind().dialect, error, sql)


# --- reading and locking ----------------------------------------------------------------


_BEGIN = (
    "WITH head AS MATERIALIZED ("
    " SELECT pg_advisory_xact_lock_shared(:lock)::text AS locked,"
    " EXISTS (SELECT 1 FROM api_keys WHERE id = :key_id AND org_id = :org"
    " AND revoked_at IS NULL) AS live,"
    " ARRAY(SELECT k FROM unnest(CAST(:keys AS text[])) AS k"
    f" WHERE NOT {idempotency.KEY_LOCK_TAKEN.format(key='k')}) AS busy)"
    " SELECT head.live, head.busy, r.key, r.fingerprint, r.status_code, r.response"
    " FROM head LEFT JOIN (SELECT p.key, p.fingerprint, p.status_code, p.response"
    " FROM unnest(CAST(:keys AS text[])) AS k(key) CROSS JOIN LATERAL"
    " (SELECT s.key, s.fingerprint, s.status_code, s.response FROM idempotency_records AS s"
    " WHERE s.scope = :scope AND s.key = k.key LIMIT 1) AS p) AS r ON true"
)


async def _begin_postgres(
    raw: _Raw, caller: service.Caller, org_id: uuid.UUID, keys: list[str]
) -> tuple[bool, set[str], dict[str, idempotency.Stored]]:
    """The organization's metering lock (shared), whether the caller's key is live, the
    keys another transaction has in flight, and the stored answers of the keys: one
    statement (`idempotency.find` and `claim`, `database.lock_organization`)."""
    parameters = {
        "lock": lock_key(org_id),
        "key_id": caller.key_id,
        "org": org_id,
        "keys": keys,
        "space": idempotency.KEY_LOCKS,
        "scope": caller.idempotency_scope,
    }
    rows = await raw.fetch(_BEGIN, parameters)
    live = caller.key_id is None or bool(rows[0][0])
    busy = set(rows[0][1] or ())
    stored = {
        row[2]: idempotency.Stored(row[2], row[3], row[4], row[5])
        for row in rows
        if row[2] is not None
    }
    return live, busy, stored


_USER_COLUMNS = (
    "id",
    "email",
    "name",
    "status",
    "max_tokens",
    "max_train_tokens",
    "inference_used",
    "training_used",
    "inference_reserved",
    "training_reserved",
    "period_start",
    "last_activity_at",
    "journal_head",
)
_ORG_COLUMNS = (
    "id",
    "period",
    "time_zone",
    "period_start",
    "next_expiry_at",
    "capacity_inference",
    "capacity_training",
    "allocated_inference",
    "allocated_training",
    "alert_thresholds",
    "used_inference",
    "reserved_inference",
    "used_training",
    "reserved_training",
)
_SPLIT = len(_USER_COLUMNS)
_TAKEN_IDS = _SPLIT + len(_ORG_COLUMNS)  # the journal ids taken, after the organization
_SKIPPED = _TAKEN_IDS + 1  # the ids, then the emails, of the users skipped


_NAMED = (
    "SELECT unnest(CAST(:ids AS uuid[]))"
    " UNION ALL SELECT e.id FROM users AS e"
    " WHERE e.org_id = :org AND e.email = ANY(CAST(:emails AS text[]))"
    " UNION ALL SELECT r.user_id FROM reservations AS r"
    " WHERE r.org_id = :org AND r.id = ANY(CAST(:reservations AS uuid[]))"
)
_TAKEN = (
    " taken AS MATERIALIZED (SELECT h.first, ARRAY("
    " SELECT nextval((SELECT pg_get_serial_sequence('journal_entries', 'id')::regclass))"
    " FROM generate_series(1, :count) WHERE h.first IS NOT NULL) AS ids"
    " FROM (SELECT (array_agg(id ORDER BY id))[1] AS first FROM locked) AS h)"
)
_LOCKED_COLUMNS = ", ".join(f"u.{name}" for name in _USER_COLUMNS)
_READ_COLUMNS = f"locked.*, {', '.join(f'o.{name}' for name in _ORG_COLUMNS)}, taken.ids"
_WITH_ORGANIZATION = (
    " LEFT JOIN taken ON taken.first = locked.id"
    " LEFT JOIN organizations AS o ON o.id = :org AND taken.first IS NOT NULL"
)

_LOCK_USERS = (
    "WITH locked AS MATERIALIZED ("
    f" SELECT {_LOCKED_COLUMNS} FROM users AS u"
    f" WHERE u.org_id = :org AND u.id = ANY(ARRAY({_NAMED}))"
    f" ORDER BY u.id FOR UPDATE OF u),{_TAKEN}"
    f" SELECT {_READ_COLUMNS} FROM locked{_WITH_ORGANIZATION} ORDER BY locked.id"
)
"""The users named (by id or email, or owning a reservation named): one probe of the
primary key for the set, whatever the planner's statistics say; and, in the same round
trip, as many journal ids as the group can write (`_take_ids`). The ids are taken once
every user is locked (the first of the locked ids, an aggregate of them all, comes first,
and the ids' subquery depends on it), so a user's entries are in id order in the order
they were written, as when they were taken by a statement of their own. They come on the
first row only, with the organization: on every row, sorting the rows would move the array
once per user, and the driver would decode the organization's JSON once per user."""

_LOCK_FREE_USERS = (
    "WITH named AS MATERIALIZED ("
    " SELECT unnest(CAST(:ids AS uuid[])) AS id, NULL AS email"
    " UNION ALL SELECT e.id, e.email FROM users AS e"
    " WHERE e.org_id = :org AND e.email = ANY(CAST(:emails AS text[]))),"
    " locked AS MATERIALIZED ("
    f" SELECT {_LOCKED_COLUMNS} FROM users AS u"
    " WHERE u.org_id = :org AND u.id = ANY(ARRAY(SELECT id FROM named))"
    f" ORDER BY u.id FOR UPDATE OF u SKIP LOCKED),{_TAKEN},"
    " skipped AS MATERIALIZED (SELECT array_agg(n.id) AS ids,"
    " array_remove(array_agg(n.email), NULL) AS emails"
    " FROM named AS n WHERE NOT EXISTS (SELECT FROM locked WHERE locked.id = n.id))"
    f" SELECT {_READ_COLUMNS},"
    " CASE WHEN locked.id IS NULL OR taken.first IS NOT NULL THEN skipped.ids END,"
    " CASE WHEN locked.id IS NULL OR taken.first IS NOT NULL THEN skipped.emails END"
    f" FROM skipped LEFT JOIN locked ON true{_WITH_ORGANIZATION} ORDER BY locked.id"
)
"""`_LOCK_USERS` for operations naming no reservation, but a user another transaction
has locked is skipped, not waited for: the users it locked as above, and, on the first
row, the ids and emails of those named and not locked (those locked elsewhere, and ids of
no user of the organization: reading the named users before locking them would cost a
second probe of each). With none locked, its one row has only them."""


async def _lock_users(
    raw: _Raw,
    org_id: uuid.UUID,
    ids: list[uuid.UUID],
    emails: list[str],
    reservation_ids: list[uuid.UUID],
    count: int,
    *,
    skip: bool = False,
) -> tuple[list[_User], _Org | None, list[int] | None, set[uuid.UUID | str]]:
    """Lock the named users of the organization, and the owners of the reservations named,
    in id order and read them, with their organization (read after its metering lock was
    taken: this statement's snapshot is), and `count` journal ids taken under those locks
    (none when no user was locked). With `skip`, the users another transaction has locked
    are left alone, not waited for: their ids and emails come last."""
    parameters = {
        "org": org_id,
        "ids": ids,
        "emails": emails,
        "reservations": reservation_ids,
        "count": count,
    }
    rows: Sequence[Any] = await raw.fetch(_LOCK_FREE_USERS if skip else _LOCK_USERS, parameters)
    skipped: set[uuid.UUID | str] = set()
    if skip:
        skipped.update(rows[0][_SKIPPED] or (), rows[0][_SKIPPED + 1] or ())
        if rows[0][0] is None:  # none locked: the row only says which were skipped
            rows = []
    if not rows:
        return [], None, None, skipped
    first = rows[0]
    org = _Org(*first[_SPLIT:_TAKEN_IDS])
    return [_User(*row[:_SPLIT]) for row in rows], org, first[_TAKEN_IDS], skipped


_RESERVATION_COLUMNS = (
    "id",
    "user_id",
    "kind",
    "amount",
    "status",
    "committed_amount",
    "expires_at",
    "created_at",
    "closed_at",
    "details",
)


_LOCK_RESERVATIONS = (
    f"SELECT {', '.join(_RESERVATION_COLUMNS)} FROM reservations"
    " WHERE org_id = :org AND id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR UPDATE"
)


async def _lock_reservations(
    raw: _Raw, org_id: uuid.UUID, ids: list[uuid.UUID]
) -> dict[uuid.UUID, _Reservation]:
    """Lock and read the organization's reservations named, after their users."""
    rows = await raw.fetch(_LOCK_RESERVATIONS, {"org": org_id, "ids": ids})
    return {row[0]: _Reservation(*row) for row in rows}


_LOCK_TOTALS = (
    "SELECT used_inference, reserved_inference, used_training, reserved_training"
    " FROM organizations WHERE id = :org FOR NO KEY UPDATE"
)
"""FOR NO KEY UPDATE, as the UPDATE that follows takes: a FOR UPDATE would also hold
back the foreign-key checks of rows naming the organization (a reservation made)."""


async def _lock_totals(raw: _Raw, org: _Org) -> _Org:
    """Lock the row of an organization whose capacity binds, after the users and the
    reservations (`service`'s order), and read its running totals under the lock."""
    rows = await raw.fetch(_LOCK_TOTALS, {"org": org.id})
    used_inference, reserved_inference, used_training, reserved_training = rows[0]
    return replace(
        org,
        used_inference=used_inference,
        reserved_inference=reserved_inference,
        used_training=used_training,
        reserved_training=reserved_training,
    )


# --- SQLite: reading, in one hand-off to aiosqlite's thread -------------------------------

_KEY_LIVE = "SELECT 1 FROM api_keys WHERE id = ? AND org_id = ? AND revoked_at IS NULL"
_STORED = (
    "SELECT key, fingerprint, status_code, response FROM idempotency_records"
    " WHERE scope = ? AND key IN ({})"
)
_STORED_CHUNK = 1000  # as `idempotency.find`
_SQLITE_USERS = (
    f"SELECT {', '.join(f'u.{name}' for name in _USER_COLUMNS)},"
    f" {', '.join(f'o.{name}' for name in _ORG_COLUMNS)}"
    " FROM users AS u JOIN organizations AS o ON o.id = u.org_id"
    " WHERE +u.org_id = ? AND u.id IN ({}) ORDER BY u.id"
)
"""The unary + keeps the organization a condition on the rows found, never the index the
search starts from: without statistics (SQLite's are never gathered) the planner reads
every user of the organization through an (org_id, …) index as soon as a dozen ids are
named, 3 ms at 10,000 users, where probing the primary key for each costs 5 µs."""
_SQLITE_RESERVATIONS = (
    f"SELECT {', '.join(_RESERVATION_COLUMNS)} FROM reservations"
    " WHERE org_id = ? AND id IN ({}) ORDER BY id"
)


def _marks(count: int) -> str:
    return ", ".join("?" * count)


def _begin_sqlite(
    statements: sqlite_raw.Statements,
    caller: service.Caller,
    org_id: uuid.UUID,
    keys: list[str],
    requests: Sequence[idempotency.Keyed | None],
    operations: Sequence[service.Operation],
) -> tuple[bool, idempotency.Group[service.Metered] | None, _Read | None]:
    """In aiosqlite's thread: whether the caller's key is live, the group sorted against
    the stored answers of its keys (`idempotency.find`; no key is ever in flight in another
    transaction on SQLite, see `idempotency.claim`), and the users and reservations the
    operations left to apply name, with their organization (`_Read`)."""
    org = org_id.hex
    key = caller.key_id
    if key is not None and statements.execute(_KEY_LIVE, (key.hex, org)).fetchone() is None:
        return False, None, None
    scope = caller.idempotency_scope
    stored: dict[str, idempotency.Stored] = {}
    for start in range(0, len(keys), _STORED_CHUNK):
        chunk = keys[start : start + _STORED_CHUNK]
        rows = statements.execute(_STORED.format(_marks(len(chunk))), (scope, *chunk))
        stored.update({row[0]: idempotency.Stored(*row) for row in rows})
    group: idempotency.Group[service.Metered] = idempotency.Group.sort(requests, stored)
    named = _Named.by([operations[i] for i in group.todo])
    if not named.refs:
        return True, group, None
    users, found = _read_users(statements, org, named)
    reservations: dict[uuid.UUID, _Reservation] = {}
    if named.reservation_ids:
        ids = [r.hex for r in named.reservation_ids]
        sql = _SQLITE_RESERVATIONS.format(_marks(len(ids)))
        for row in statements.execute(sql, (org, *ids)):
            reservation = _Reservation(
                uuid.UUID(row[0]),
                uuid.UUID(row[1]),
                row[2],
                row[3],
                row[4],
                row[5],
                sqlite_raw.to_datetime(row[6]),
                sqlite_raw.to_datetime(row[7]),
                sqlite_raw.to_datetime(row[8]),
                sqlite_raw.from_json(row[9]),
            )
            reservations[reservation.id] = reservation
    last_id: int = statements.execute(_LAST_ID).fetchone()[0]
    return True, group, _Read(users, found, reservations, last_id)


def _read_users(
    statements: sqlite_raw.Statements, org: str, named: _Named
) -> tuple[list[_User], _Org | None]:
    """The users named (by id or email, or owning a reservation named) and their
    organization: one probe of the primary key for the set. Ids only are the list itself;
    else the union of the ids, of the users found by email and of the reservations'
    owners (not an OR of two indexes, which SQLite answers by reading every user of the
    organization: `repository.named`)."""
    # The ids named are UUIDs already: their text finds them again.
    known = {i.hex: i for i in named.ids}
    ids = list(known)
    parameters: list[str] = [org]
    if not named.emails and not named.reservation_ids:
        listed = _marks(len(ids))
        parameters += ids
    else:
        parts = []
        if ids:
            parts.append(f"SELECT e.id FROM users AS e WHERE e.id IN ({_marks(len(ids))})")
            parameters += ids
        if named.emails:
            emails = _marks(len(named.emails))
            parts.append(f"SELECT e.id FROM users AS e WHERE e.email IN ({emails})")
            parameters += named.emails
        if named.reservation_ids:
            held = _marks(len(named.reservation_ids))
            parts.append(
                f"SELECT r.user_id FROM reservations AS r WHERE r.org_id = ? AND r.id IN ({held})"
            )
            parameters += [org, *(r.hex for r in named.reservation_ids)]
        listed = " UNION ALL ".join(parts)
    users: list[_User] = []
    found: _Org | None = None
    to_datetime = sqlite_raw.to_datetime
    starts: dict[str, datetime] = {}  # the users' periods are mostly one
    for row in statements.execute(_SQLITE_USERS.format(listed), parameters):
        start = starts.get(row[10])
        if start is None:
            start = starts[row[10]] = to_datetime(row[10])
        users.append(
            _User(
                known.get(row[0]) or uuid.UUID(row[0]),
                row[1],
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                start,
                to_datetime(row[11]),
                row[12],
            )
        )
        if found is None:
            found = _Org(
                uuid.UUID(row[13]),
                row[14],
                row[15],
                to_datetime(row[16]),
                to_datetime(row[17]),
                row[18],
                row[19],
                row[20],
                row[21],
                sqlite_raw.from_json(row[22]),
                *row[23:27],
            )
    return users, found


def _parse_user_ref(ref: str) -> uuid.UUID | str:
    if "@" in ref:
        return ref.lower()
    try:
        return uuid.UUID(ref)
    except ValueError:
        return ref


# --- deciding ---------------------------------------------------------------------------

_Counted = tuple[str, str | None, int | None, TokenAdminError | None]


@dataclass
class _Decided:
    outcomes: list[service.Outcome]
    users: list[_User]
    reservations: list[_Reservation]  # made or closed by the group
    entries: list[Entry]
    counted: list[_Counted]
    ids: list[int] | None = None  # journal ids taken with the users' locks (PostgreSQL)
    deferred: list[int] = field(default_factory=list)  # operations left for later (`skip`)
    totals: _Totals | None = None  # where the organization's capacity binds


@dataclass(frozen=True, slots=True)
class _Named:
    """The users and reservations a group's operations name."""

    refs: list[uuid.UUID | str | None]  # each operation's user, parsed
    ids: list[uuid.UUID]
    emails: list[str]
    reservation_ids: list[uuid.UUID]

    @classmethod
    def by(cls, operations: Sequence[service.Operation]) -> _Named:
        refs = [_parse_user_ref(op.user) if op.user else None for op in operations]
        return cls(
            refs,
            [r for r in refs if isinstance(r, uuid.UUID)],
            [r for r in refs if isinstance(r, str)],
            sorted({op.reservation_id for op in operations if op.reservation_id}),
        )


@dataclass(frozen=True, slots=True)
class _Read:
    """The users named, their organization and the reservations named, as SQLite's first
    hand-off read them (`_begin_sqlite`), and the journal's last id: the writer lock, held
    since BEGIN IMMEDIATE, stands for PostgreSQL's row locks, and no other transaction
    writes an entry until this one ends (nor does this one between its two hand-offs: only
    `events` may write there), so the group's entries take the ids after it."""

    users: list[_User]
    org: _Org | None
    reservations: dict[uuid.UUID, _Reservation]
    last_id: int


async def _decide(
    session: AsyncSession,
    raw: _Raw | None,
    act: Act,
    org_id: uuid.UUID,
    operations: Sequence[service.Operation],
    default_ttl: int,
    read: _Read | None,
    skip: bool = False,
) -> _Decided:
    """Each operation's outcome, in order, by `service._debit`'s and `service._close`'s
    rules; the users and reservations (changed in place), the journal entries (chained,
    ids not yet given) and the metrics to count. Raises `_Fallback` before anything is
    written when the group needs the ORM path. On SQLite (`raw` None) the rows were read
    already (`read`).

    With `skip` (PostgreSQL, operations naming no reservation), the operations of users
    another transaction has locked are not decided but `deferred` (and those of ids that
    name no user: the next transaction finds them unknown), unless it could lock none of
    the users named: then it waits for them, as without."""
    decided = _Decided([], [], [], [], [])
    if not operations:
        return decided
    named = _Named.by(operations)
    skipped: set[uuid.UUID | str] = set()
    if raw is not None:
        # Each operation writes one journal entry at most: its ids are taken with the locks.
        lock = partial(
            _lock_users,
            raw, org_id, named.ids, named.emails, named.reservation_ids, len(operations),
        )  # fmt: skip
        skip = skip and not named.reservation_ids
        users, org, decided.ids, skipped = await lock(skip=skip)
        if skipped and not users:
            users, org, decided.ids, skipped = await lock()
    else:
        assert read is not None
        users, org = read.users, read.org
        decided.ids = list(range(read.last_id + 1, read.last_id + 1 + len(operations)))
    if org is None:
        raise _Fallback
    start = current_period(org, act.now)
    if (org.next_expiry_at is not None and org.next_expiry_at <= act.now) or (
        org.period_start != start
    ):
        raise _Fallback  # maintenance due: `service.MaintenanceDue`
    by_ref: dict[uuid.UUID | str, _User] = {}
    by_id: dict[uuid.UUID, _User] = {}
    for locked in users:
        if locked.period_start != start:
            raise _Fallback  # the counters of an earlier period are reset first
        by_ref[locked.id] = by_ref[locked.email] = by_id[locked.id] = locked
    if raw is None:
        assert read is not None
        reservations = read.reservations
    elif named.reservation_ids:
        reservations = await _lock_reservations(raw, org_id, named.reservation_ids)
    else:
        reservations = {}
    totals = None
    if org.binds():
        # Rule 3: the group must also fit what the organization has left, from the running
        # totals on its row; where they are not kept yet, the ORM path sums them once.
        if raw is not None:
            org = await _lock_totals(raw, org)
        totals = org.totals()
        if totals is None:
            raise _Fallback
    decided.totals = totals
    used_before = [(user, user.inference_used, user.training_used) for user in users]
    heads = {u.id: u.journal_head for u in users}
    group = _Group(act, org_id, default_ttl, decided, heads, totals)
    for index, (op, ref) in enumerate(zip(operations, named.refs, strict=True)):
        if ref in skipped:
            decided.deferred.append(index)
        elif op.reservation_id is None:
            group.debit(op, by_ref.get(cast(uuid.UUID | str, ref)))
        else:
            reservation = reservations.get(op.reservation_id)
            user = None if reservation is None else by_id[reservation.user_id]
            group.close(op, reservation, user)
    decided.users = users
    for user in users:
        user.journal_head = group.heads[user.id]
    # Under the users' row locks: one transaction sees each crossing of a threshold.
    for user, inference, training in used_before:
        for kind, was in ((Kind.inference, inference), (Kind.training, training)):
            after = user.used(kind)
            if after <= was:
                continue
            for percent in events.crossed(was, after, user.allowance(kind), org.alert_thresholds):
                await events.user_threshold_passed(session, act, org.id, user, kind, percent, start)
    return decided


@dataclass
class _Group:
    """The operations of a group decided in order, with what they did so far."""

    act: Act
    org_id: uuid.UUID
    default_ttl: int
    decided: _Decided
    heads: dict[uuid.UUID, str | None]
    totals: _Totals | None = None  # where the organization's capacity binds

    def available(self, user: _User, kind: Kind) -> int:
        """What the user may still use: min(user remaining, organization remaining)
        (`service.available`)."""
        remaining = user.remaining(kind)
        room = None if self.totals is None else self.totals.room(kind)
        return remaining if room is None else max(0, min(remaining, room))

    def balance(self, user: _User, kind: Kind) -> service.Balance:
        allowance, used, reserved = user.balance(kind)
        return service.Balance(allowance, used, reserved, self.available(user, kind))

    def held(self, reservation: _Reservation, user: _User, entry: Entry) -> service.Held:
        kind = Kind(reservation.kind)
        return service.Held(
            user.id,
            user.email,
            kind,
            reservation.amount,
            self.balance(user, kind),
            id=reservation.id,
            status=reservation.status,
            committed=reservation.committed_amount,
            expires_at=reservation.expires_at,
            entry=entry,
        )

    def insufficient(
        self, user: _User, kind: Kind, tokens: int, left: int, *, reserved: int = 0
    ) -> InsufficientTokens:
        """`service._insufficient`: `left` counts what this request may use, its own
        reservation (`reserved`) included."""
        room = None if self.totals is None else self.totals.room(kind)
        by_organization = room is not None and room < user.remaining(kind)
        return service.insufficient(
            user.id, user.email, kind, tokens, left, by_organization, reserved
        )

    def take(self, kind: Kind, used: int, reserved: int) -> None:
        if self.totals is not None:
            self.totals.add(kind, used, reserved)

    def refuse(self, op: service.Operation, refusal: TokenAdminError, counted: _Counted) -> None:
        self.decided.outcomes.append(refusal)
        self.decided.counted.append(counted)

    def record(self, user: _User, row: dict[str, Any]) -> Entry:
        row["prev_hash"] = self.heads[user.id]
        row["hash"] = self.heads[user.id] = chain.link(self.heads[user.id], row)
        entry = Entry(row)
        self.decided.entries.append(entry)
        return entry

    def touch(self, user: _User) -> None:
        user.changed = True
        now, last = self.act.now, user.last_activity_at
        if last is None or now - last >= ACTIVITY_RESOLUTION or now < last:
            user.last_activity_at = now
            user.active_changed = True

    def debit(self, op: service.Operation, user: _User | None) -> None:
        """Usage or a reservation (`service._debit`)."""
        kind, tokens = cast(Kind, op.kind), cast(int, op.tokens)
        counted = (op.action, kind.value, tokens)
        refusal: TokenAdminError
        if user is None:
            refusal = NotFound(f"No user '{op.user}' in this organization.", code="user_not_found")
            return self.refuse(op, refusal, (*counted, refusal))
        if user.status != "active":
            refusal = Conflict(
                f"{user.email} is deactivated and can't use tokens.", code="user_deactivated"
            )
            return self.refuse(op, refusal, (*counted, refusal))
        left = self.available(user, kind)
        if tokens > left and user.reserved(kind):
            raise _Fallback  # overdue reservations expire first
        if tokens > left:
            refusal = self.insufficient(user, kind, tokens, left)
            return self.refuse(op, refusal, (*counted, refusal))
        self.touch(user)
        self.decided.counted.append((*counted, None))
        if op.action == "usage":
            user.add_used(kind, tokens)
            self.take(kind, tokens, 0)
            entry = self.record(
                user, _entry(self.act, self.org_id, user, "usage", kind, tokens, op.details)
            )
            balance = self.balance(user, kind)
            self.decided.outcomes.append(
                service.Used(user.id, user.email, kind, tokens, balance, entry)
            )
            return None
        now = self.act.now
        reservation = _Reservation(
            id=uuid.uuid4(),
            user_id=user.id,
            kind=kind.value,
            amount=tokens,
            status="open",
            committed_amount=None,
            expires_at=now + timedelta(seconds=op.ttl_seconds or self.default_ttl),
            created_at=now,
            closed_at=None,
            details=op.details,
            new=True,
        )
        self.decided.reservations.append(reservation)
        user.add_reserved(kind, tokens)
        self.take(kind, 0, tokens)
        row = _entry(
            self.act, self.org_id, user, "reserve", kind, tokens, op.details,
            used=0, reserved=tokens, reservation_id=reservation.id,
        )  # fmt: skip
        self.decided.outcomes.append(self.held(reservation, user, self.record(user, row)))
        return None

    def close(
        self, op: service.Operation, reservation: _Reservation | None, user: _User | None
    ) -> None:
        """A commit or a release (`service._close`)."""
        refusal: TokenAdminError
        if reservation is None or user is None:
            refusal = NotFound("Reservation not found.", code="reservation_not_found")
            kind = op.kind.value if op.kind else None
            return self.refuse(op, refusal, (op.action, kind, op.tokens, refusal))
        counted = (op.action, reservation.kind, op.tokens or reservation.amount)
        if reservation.status == "expired" and op.action == "commit":
            refusal = _expired(reservation)
            return self.refuse(op, refusal, (*counted, refusal))
        if reservation.status != "open":
            refusal = ReservationClosed(
                f"This reservation is already {reservation.status}.",
                details={"id": str(reservation.id), "status": reservation.status},
            )
            return self.refuse(op, refusal, (*counted, refusal))
        if op.action == "commit" and reservation.expires_at <= self.act.now:
            raise _Fallback  # an overdue reservation expires instead
        kind, held, now = Kind(reservation.kind), reservation.amount, self.act.now
        if op.action == "release":
            user.add_reserved(kind, -held)
            self.take(kind, 0, -held)
            user.changed = True
            row = _entry(
                self.act, self.org_id, user, "release", kind, held, None,
                used=0, reserved=-held, reservation_id=reservation.id,
            )  # fmt: skip
            entry = self.record(user, row)
            reservation.status, reservation.closed_at = "released", now
        else:
            actual = op.tokens if op.tokens is not None else held
            extra = actual - held
            if extra > 0:
                left = self.available(user, kind)
                if extra > left:
                    refusal = self.insufficient(user, kind, actual, held + left, reserved=held)
                    return self.refuse(op, refusal, (*counted, refusal))
            self.touch(user)
            user.add_used(kind, actual)
            user.add_reserved(kind, -held)
            self.take(kind, actual, -held)
            row = _entry(
                self.act, self.org_id, user, "commit", kind, actual,
                {"reserved": held, **(op.details or {})},
                used=actual, reserved=-held, reservation_id=reservation.id,
            )  # fmt: skip
            entry = self.record(user, row)
            reservation.status, reservation.closed_at = "committed", now
            reservation.committed_amount = actual
        self.decided.reservations.append(reservation)
        self.decided.counted.append((op.action, reservation.kind, held, None))
        self.decided.outcomes.append(self.held(reservation, user, entry))
        return None


def _expired(reservation: _Reservation) -> ReservationExpired:
    return ReservationExpired(
        "This reservation expired before it was committed; its tokens were released.",
        details={"id": str(reservation.id), "expires_at": reservation.expires_at.isoformat()},
    )


def _entry(
    act: Act,
    org_id: uuid.UUID,
    user: _User,
    action: str,
    kind: Kind,
    amount: int,
    details: dict[str, Any] | None,
    *,
    used: int | None = None,
    reserved: int = 0,
    reservation_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The journal row `journal.record` makes for a change of a user's balance, after it."""
    allowance, used_after, reserved_after = user.balance(kind)
    return {
        "org_id": org_id,
        "user_id": user.id,
        "purchase_id": None,
        "reservation_id": reservation_id,
        "created_at": act.now,
        "actor": act.actor,
        "action": action,
        "kind": kind.value,
        "amount": amount,
        "reason": None,
        "capacity_delta": 0,
        "allocated_delta": 0,
        "allowance_delta": 0,
        "used_delta": amount if used is None else used,
        "reserved_delta": reserved,
        "capacity_after": None,
        "allocated_after": None,
        "allowance_after": allowance,
        "used_after": used_after,
        "reserved_after": reserved_after,
        "details": details,
    }


# --- writing ----------------------------------------------------------------------------


def _take_ids(entries: list[Entry], taken: list[int] | None) -> None:
    """Give the entries their ids, in order, from those taken with the users' locks, one
    per operation: so a user's entries are in id order in the order they were written. On
    PostgreSQL the locking statement took them from the sequence, and those of refused
    operations are left unused, gaps as a rolled back transaction's ids already leave
    (nothing reads the ids as a count); on SQLite they follow the last one (`_Read`)."""
    if not entries:
        return
    assert taken is not None
    for entry, entry_id in zip(entries, sorted(taken)[: len(entries)], strict=True):
        entry.id = entry_id


_COUNTERS = (
    "inference_used",
    "training_used",
    "inference_reserved",
    "training_reserved",
    "last_activity_at",
    "journal_head",
)
_JOURNAL_COLUMNS = ("id", *chain.CONTENT, "prev_hash", "hash")
_RECORD_COLUMNS = (
    "scope",
    "key",
    "fingerprint",
    "status_code",
    "response",
    "created_at",
    "expires_at",
)
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


# Arrays of these types are bound as the text of an array literal, which PostgreSQL reads
# in C: asyncpg's encoding of a list asks of every item whether it is itself a list, which
# costs more than the whole literal. Text, JSON and UUIDs stay lists (text would need
# quoting; a UUID's text costs as much as asyncpg's encoding of it).
_AS_LITERAL = {"BIGINT": False, "INTEGER": False, "TIMESTAMP WITH TIME ZONE": True}  # quoted?


def _arrays(table: Table, names: Sequence[str], prefix: str) -> str:
    columns: list[Column[Any]] = [table.c[name] for name in names]
    casts = []
    for column in columns:
        sql_type = column.type.compile(dialect=_POSTGRESQL)
        bound = f":{prefix}{column.name}"
        if sql_type in _AS_LITERAL:
            bound = f"CAST({bound} AS text)"
        casts.append(f"CAST({bound} AS {sql_type}[])")
    return ", ".join(casts)


def _inserting_arrays(table: Table, names: Sequence[str], prefix: str) -> str:
    """An INSERT of rows from arrays, one per column, but one value for the columns the
    group's rows share (`_SHARED`): a thousand copies of the organization's id or the
    actor would be encoded one by one, and asked each whether it is itself a list."""
    shared = [name for name in names if f"{prefix}{name}" in _SHARED]
    apart = [name for name in names if name not in shared]
    values = [
        f"CAST(:{prefix}{name} AS {table.c[name].type.compile(dialect=_POSTGRESQL)})"
        if name in shared
        else f"v.{name}"
        for name in names
    ]
    return (
        f"INSERT INTO {table.name} ({', '.join(names)}) SELECT {', '.join(values)}"
        f" FROM unnest({_arrays(table, apart, prefix)}) AS v({', '.join(apart)})"
    )


def _literal(values: Sequence[Any], quoted: bool) -> str:
    """An array literal of integers or datetimes (`str` of an aware datetime is a
    timestamptz PostgreSQL reads, with its offset)."""
    if quoted:
        # A group's datetimes are mostly one (its moment): each distinct one is written once.
        spelled = {value: f'"{value}"' for value in set(values) if value is not None}
        items = ["NULL" if value is None else spelled[value] for value in values]
    else:
        items = ["NULL" if value is None else str(value) for value in values]
    return "{" + ",".join(items) + "}"


def _literals(table: Table, names: Sequence[str], prefix: str) -> dict[str, bool]:
    """The parameters of `_arrays(table, names, prefix)` bound as literals: quoted or not."""
    found = {}
    for name in names:
        sql_type = table.c[name].type.compile(dialect=_POSTGRESQL)
        if sql_type in _AS_LITERAL:
            found[f"{prefix}{name}"] = _AS_LITERAL[sql_type]
    return found


_CLOSED = ("status", "committed_amount", "closed_at")
_SHARED = frozenset(
    {"j_org_id", "j_actor", "j_created_at", "i_scope", "i_created_at", "i_expires_at"}
)
"""Columns whose value is one for a group's rows: its entries are the organization's,
made by one actor at one moment (`_entry`), its records kept in one scope at that moment
for one time (`idempotency.Group.finish`). Sent once (`_inserting_arrays`)."""


_TOTALS = ("used_inference", "reserved_inference", "used_training", "reserved_training")


@cache
def _write_statement(
    users: bool, made: bool, closed: bool, journal: bool, records: bool, totals: bool
) -> str:
    """One statement writing the group: users' counters and heads, reservations made and
    closed, journal entries, idempotency records, and what it adds to a binding
    organization's running totals (its row locked by `_lock_totals`)."""
    parts = []
    if totals:
        assignments = ", ".join(f"{name} = {name} + CAST(:o_{name} AS bigint)" for name in _TOTALS)
        parts.append(f"o AS (UPDATE organizations SET {assignments} WHERE id = :org)")
    if users:
        assignments = ", ".join(f"{name} = v.{name}" for name in _COUNTERS)
        parts.append(
            f"u AS (UPDATE users AS t SET {assignments}"
            f" FROM unnest({_arrays(USERS, ('id', *_COUNTERS), 'u_')})"
            f" AS v(id, {', '.join(_COUNTERS)}) WHERE t.org_id = :org AND t.id = v.id"
            " AND t.id = ANY(CAST(:u_id AS uuid[])))"
        )
    if made:
        parts.append(
            f"r AS (INSERT INTO reservations ({', '.join(_MADE_COLUMNS)})"
            f" SELECT * FROM unnest({_arrays(RESERVATIONS, _MADE_COLUMNS, 'r_')}))"
        )
    if closed:
        assignments = ", ".join(f"{name} = v.{name}" for name in _CLOSED)
        parts.append(
            f"c AS (UPDATE reservations AS t SET {assignments}"
            f" FROM unnest({_arrays(RESERVATIONS, ('id', *_CLOSED), 'c_')})"
            f" AS v(id, {', '.join(_CLOSED)}) WHERE t.org_id = :org AND t.id = v.id)"
        )
    if journal:
        parts.append(f"j AS ({_inserting_arrays(JOURNAL, _JOURNAL_COLUMNS, 'j_')})")
    if records:
        parts.append(f"i AS ({_inserting_arrays(RECORDS, _RECORD_COLUMNS, 'i_')})")
    return f"WITH {', '.join(parts)} SELECT 1"


_MADE_COLUMNS = ("org_id", *_RESERVATION_COLUMNS)
_LITERALS = {
    name: quoted
    for name, quoted in {
        **_literals(USERS, ("id", *_COUNTERS), "u_"),
        **_literals(RESERVATIONS, _MADE_COLUMNS, "r_"),
        **_literals(RESERVATIONS, ("id", *_CLOSED), "c_"),
        **_literals(JOURNAL, _JOURNAL_COLUMNS, "j_"),
        **_literals(RECORDS, _RECORD_COLUMNS, "i_"),
    }.items()
    if name not in _SHARED
}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


async def _write_postgres(
    raw: _Raw,
    org_id: uuid.UUID,
    users: list[_User],
    reservations: list[_Reservation],
    entries: list[Entry],
    records: list[dict[str, Any]],
    totals: _Totals | None,
) -> None:
    made = [r for r in reservations if r.new]
    closed = [r for r in reservations if not r.new]
    added = _added(totals)
    if not (users or reservations or entries or records):
        return
    parameters: dict[str, Any] = {"org": org_id}
    if added:
        parameters.update({f"o_{name}": value for name, value in zip(_TOTALS, added, strict=True)})
    if users:
        parameters["u_id"] = [user.id for user in users]
        for name in _COUNTERS:
            parameters[f"u_{name}"] = [getattr(user, name) for user in users]
    if made:
        parameters["r_org_id"] = [org_id] * len(made)
        for name in _RESERVATION_COLUMNS:
            parameters[f"r_{name}"] = [getattr(r, name) for r in made]
        parameters["r_details"] = [_json(r.details) for r in made]
    if closed:
        for name in ("id", *_CLOSED):
            parameters[f"c_{name}"] = [getattr(r, name) for r in closed]
    if entries:
        parameters["j_id"] = [entry.id for entry in entries]
        for name in _JOURNAL_COLUMNS[1:]:
            if f"j_{name}" in _SHARED:
                parameters[f"j_{name}"] = entries[0].row[name]
            else:
                parameters[f"j_{name}"] = [entry.row[name] for entry in entries]
        parameters["j_details"] = [_json(entry.row["details"]) for entry in entries]
    if records:
        for name in _RECORD_COLUMNS:
            if f"i_{name}" in _SHARED:
                parameters[f"i_{name}"] = records[0][name]
            else:
                parameters[f"i_{name}"] = [record[name] for record in records]
    for name, quoted in _LITERALS.items():
        if name in parameters:
            parameters[name] = _literal(parameters[name], quoted)
    shape = (bool(users), bool(made), bool(closed), bool(entries), bool(records), bool(added))
    await raw.fetch(_write_statement(*shape), parameters)


def _added(totals: _Totals | None) -> tuple[int, int, int, int] | None:
    """What the group adds to the running totals (`_TOTALS`' order); None for nothing."""
    if totals is None or not totals.added:
        return None
    inference = totals.added.get(Kind.inference, (0, 0))
    training = totals.added.get(Kind.training, (0, 0))
    return (*inference, *training)


# --- SQLite: writing, in one hand-off to aiosqlite's thread -------------------------------

_LAST_ID = "SELECT coalesce(max(id), 0) FROM journal_entries"


def _updating(table: Table, names: Sequence[str]) -> str:
    assignments = ", ".join(f"{name} = ?" for name in names)
    return f"UPDATE {table.name} SET {assignments} WHERE id = ? AND org_id = ?"


_UPDATE_USERS = _updating(USERS, _COUNTERS)
_UPDATE_COUNTERS = _updating(USERS, [name for name in _COUNTERS if name != "last_activity_at"])
_CLOSE_RESERVATIONS = _updating(RESERVATIONS, _CLOSED)


def _inserting(table: Table, names: Sequence[str]) -> str:
    return f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({_marks(len(names))})"


_ADD_TOTALS = (
    f"UPDATE organizations SET {', '.join(f'{name} = {name} + ?' for name in _TOTALS)} WHERE id = ?"
)
_MAKE_RESERVATIONS = _inserting(RESERVATIONS, _MADE_COLUMNS)
_INSERT_JOURNAL = _inserting(JOURNAL, _JOURNAL_COLUMNS)
_INSERT_RECORDS = _inserting(RECORDS, _RECORD_COLUMNS)


def _write_sqlite(
    statements: sqlite_raw.Statements,
    org_id: uuid.UUID,
    users: list[_User],
    reservations: list[_Reservation],
    entries: list[Entry],
    records: list[dict[str, Any]],
    totals: _Totals | None,
) -> None:
    """In aiosqlite's thread: write the group, one executemany per table written."""
    org = org_id.hex
    added = _added(totals)
    if added:
        statements.execute(_ADD_TOTALS, (*added, org))
    stamps = sqlite_raw.Stamps()
    hex_of = sqlite_raw.hex_of
    # A user's last activity moves at most once a minute: the others' rows are written
    # without it, so its index entry is left alone (rewriting it cost a third of the update).
    active = [user for user in users if user.active_changed]
    if active:
        statements.executemany(
            _UPDATE_USERS,
            [
                (
                    user.inference_used,
                    user.training_used,
                    user.inference_reserved,
                    user.training_reserved,
                    stamps[user.last_activity_at],
                    user.journal_head,
                    user.id.hex,
                    org,
                )
                for user in active
            ],
        )
    if len(active) < len(users):
        statements.executemany(
            _UPDATE_COUNTERS,
            [
                (
                    user.inference_used,
                    user.training_used,
                    user.inference_reserved,
                    user.training_reserved,
                    user.journal_head,
                    user.id.hex,
                    org,
                )
                for user in users
                if not user.active_changed
            ],
        )
    made = [r for r in reservations if r.new]
    if made:
        statements.executemany(
            _MAKE_RESERVATIONS,
            [
                (
                    org,
                    r.id.hex,
                    r.user_id.hex,
                    r.kind,
                    r.amount,
                    r.status,
                    r.committed_amount,
                    stamps[r.expires_at],
                    stamps[r.created_at],
                    stamps[r.closed_at],
                    sqlite_raw.json_text(r.details),
                )
                for r in made
            ],
        )
    closed = [r for r in reservations if not r.new]
    if closed:
        statements.executemany(
            _CLOSE_RESERVATIONS,
            [(r.status, r.committed_amount, stamps[r.closed_at], r.id.hex, org) for r in closed],
        )
    if entries:
        rows = []
        for entry in entries:
            row = [entry.id, *_JOURNAL_CONTENT(entry.row)]
            for position in _JOURNAL_UUIDS:
                row[position] = hex_of(row[position])
            row[_JOURNAL_CREATED_AT] = stamps[row[_JOURNAL_CREATED_AT]]
            row[_JOURNAL_DETAILS] = sqlite_raw.json_text(row[_JOURNAL_DETAILS])
            rows.append(row)
        statements.executemany(_INSERT_JOURNAL, rows)
    if records:
        statements.executemany(
            _INSERT_RECORDS,
            [
                (
                    record["scope"],
                    record["key"],
                    record["fingerprint"],
                    record["status_code"],
                    record["response"],
                    stamps[record["created_at"]],
                    stamps[record["expires_at"]],
                )
                for record in records
            ],
        )


_JOURNAL_CONTENT = itemgetter(*_JOURNAL_COLUMNS[1:])
_JOURNAL_UUIDS = tuple(
    n for n, name in enumerate(_JOURNAL_COLUMNS) if isinstance(JOURNAL.c[name].type, Uuid)
)
_JOURNAL_CREATED_AT = _JOURNAL_COLUMNS.index("created_at")
_JOURNAL_DETAILS = _JOURNAL_COLUMNS.index("details")
