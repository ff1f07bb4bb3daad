"""The journal: the only way balances change, and the proof that they are right.

`record` applies a change to the stored balances and appends the entry that describes it,
in the caller's transaction, so a balance never moves without its entry. `verify` replays
every entry and compares the result with every stored balance.

Entries are appended in bulk: `record` keeps each new entry in its session, in order, and
`write_pending` inserts them all in one statement, after the session's other changes.
It runs before every commit (a session event), so no entry can be left behind; code that
needs the entries' ids sooner (metering answers with them) calls it itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Table,
    any_,
    bindparam,
    event,
    literal_column,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from tokenadmin.act import Act
from tokenadmin.journal import chain
from tokenadmin.journal import verify as verify_module
from tokenadmin.models import JournalEntry, Organization, User
from tokenadmin.rows import insert_many, update_many
from tokenadmin.tokens import Kind

ACTIONS = (
    # Every action a journal entry can name, for filters and documentation.
    "allowance_changed",
    "api_key_created",
    "api_key_revoked",
    "commit",
    "model_access_changed",
    "model_removed",
    "model_set",
    "organization_created",
    "period_reset",
    "period_started",
    "policy_changed",
    "purchase",
    "purchase_expired",
    "purchase_expiry_changed",
    "release",
    "reservation_expired",
    "reserve",
    "token_request_approved",
    "token_request_denied",
    "token_request_withdrawn",
    "tokens_requested",
    "upstream_changed",
    "usage",
    "user_changed",
    "user_created",
    "user_deactivated",
    "user_reactivated",
)


PENDING = "tokenadmin.journal.pending"  # the key of the session's unwritten entries
JOURNAL = cast(Table, JournalEntry.__table__)
USERS = cast(Table, User.__table__)
ORGANIZATIONS = cast(Table, Organization.__table__)


@dataclass
class Entry:
    """A journal entry recorded in this transaction; its id is known once it is written."""

    row: dict[str, Any]
    id: int | None = None


def record(
    session: AsyncSession,
    act: Act,
    org: Organization,
    action: str,
    *,
    kind: Kind | None = None,
    user: User | None = None,
    amount: int = 0,
    capacity: int = 0,
    allocated: int = 0,
    allowance: int = 0,
    used: int = 0,
    reserved: int = 0,
    reason: str | None = None,
    purchase_id: uuid.UUID | None = None,
    reservation_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> Entry:
    """Apply the deltas to `org` and `user` and append the journal entry for them."""
    if (capacity or allocated or allowance or used or reserved) and kind is None:
        raise ValueError("a change of tokens needs a kind")
    if kind is not None and capacity:
        org.add_capacity(kind, capacity)
    if kind is not None and allocated:
        org.add_allocated(kind, allocated)
    if user is not None and kind is not None:
        # Only what moves: an unchanged column must not become a change to write.
        if allowance:
            user.set_allowance(kind, user.allowance(kind) + allowance)
        if used:
            user.add_used(kind, used)
        if reserved:
            user.add_reserved(kind, reserved)
        if used or reserved:
            # Rule 3's running totals count the used of the organization's current period
            # only: a reset of an earlier period's counters leaves them as they are.
            current = user.period_start == org.period_start
            org.add_usage(kind, used if current else 0, reserved)
    elif allowance or used or reserved:
        raise ValueError("a change of a user's balances needs the user")
    org_level = kind is not None and (capacity or allocated or user is None)
    entry = Entry(
        {
            "org_id": org.id,
            "user_id": user.id if user is not None else None,
            "purchase_id": purchase_id,
            "reservation_id": reservation_id,
            "created_at": act.now,
            "actor": act.actor,
            "action": action,
            "kind": kind.value if kind is not None else None,
            "amount": amount,
            "reason": reason,
            "capacity_delta": capacity,
            "allocated_delta": allocated,
            "allowance_delta": allowance,
            "used_delta": used,
            "reserved_delta": reserved,
            "capacity_after": org.capacity(kind) if org_level and kind is not None else None,
            "allocated_after": org.allocated(kind) if org_level and kind is not None else None,
            "allowance_after": user.allowance(kind) if user is not None and kind else None,
            "used_after": user.used(kind) if user is not None and kind else None,
            "reserved_after": user.reserved(kind) if user is not None and kind else None,
            "details": details,
        }
    )
    session.info.setdefault(PENDING, []).append(entry)
    return entry


def record_returned(
    session: AsyncSession,
    act: Act,
    org: Organization,
    action: str,
    user: User,
    kind: Kind,
    returned: int,
    **more: Any,
) -> Entry:
    """`record` an entry of `returned` tokens of a user's allowance going back to the
    organization's balance (a deactivation, a deactivated user's period ending)."""
    return record(
        session,
        act,
        org,
        action,
        kind=kind,
        user=user,
        amount=returned,
        allowance=-returned,
        allocated=-returned,
        **more,
    )


async def write_pending(session: AsyncSession) -> None:
    """Write the session's changes, then its recorded entries in order, giving them ids."""
    await session.run_sync(_write_pending)


def _write_pending(session: Session) -> dict[chain.Chain, str]:
    """`write_pending` within `run_sync`; the new heads of the chains written."""
    session.flush()
    pending: list[Entry] = session.info.pop(PENDING, [])
    if not pending:
        return {}
    # Ids are taken first and given in the order the balances changed, which is the order
    # `verify` replays entries in; then one insert of all the rows, with no RETURNING.
    for entry, entry_id in zip(pending, _next_ids(session, len(pending)), strict=True):
        entry.id = entry_id
    orgs = {entry.row["org_id"] for entry in pending}
    org_id = next(iter(orgs)) if len(orgs) == 1 else None  # then every statement names it
    heads = _link(session, pending, org_id)
    insert_many(session, JOURNAL, [{"id": entry.id, **entry.row} for entry in pending])
    _save_heads(session, heads, org_id)
    return heads


def append(
    session: Session,
    rows: list[dict[str, Any]],
    heads: Mapping[chain.Chain, str | None] | None = None,
) -> dict[chain.Chain, str]:
    """Write entries made by the caller in one pass (rows with the keys `record` gives,
    already applied to the balances), in order, after any still pending: ids in that order,
    each chained after its chain's head (the caller holds the locks of those chains).
    `heads` are heads the caller read under those locks in this transaction (None: the
    chain has no entry yet); the others are read here, and the entries still pending
    move the heads of their chains. Returns the chains' new heads, for the caller to store
    with the rows it writes (users.journal_head, organizations.journal_head)."""
    written = _write_pending(session)
    if not rows:
        return {}
    known = heads or {}
    orgs = {row["org_id"] for row in rows}
    org_id = next(iter(orgs)) if len(orgs) == 1 else None
    # Heads at hand are not read again: for a change of 10,000 users, that read was a
    # statement of 10,000 ids (0.04 to 0.07 s on PostgreSQL). A chain's head is the one its
    # last row here made, else the one its pending entries made, else the caller's, else
    # the one stored.
    unread = {key for key in map(chain.chain_of, rows) if key not in known}
    current = _heads(session, unread, org_id)
    current.update(written)
    link = chain.link
    for row, entry_id in zip(rows, _next_ids(session, len(rows)), strict=True):
        user_id = row["user_id"]
        key = ("user", user_id) if user_id is not None else ("organization", row["org_id"])
        previous = current[key] if key in current else known.get(key)
        row["id"] = entry_id
        row["prev_hash"] = previous
        row["hash"] = current[key] = link(previous, row)
    if session.get_bind().dialect.name == "postgresql":
        _copy(session, rows)
    else:
        _insert_sqlite(session, rows)
    return current


def _insert_sqlite(session: Session, rows: list[dict[str, Any]]) -> None:
    """One executemany of the rows in the form SQLite stores them (ids as 32 hex digits,
    times as naive UTC text, details as JSON text), without the per-value processing of
    the column types, which would be most of the time."""
    columns = list(rows[0])
    values = []
    for name in columns:  # column by column: one loop of few steps per column
        column = [row[name] for row in rows]
        convert = _SQLITE_FORM.get(name)
        if convert is not None and name in _SHARED:
            done = {value: convert(value) for value in set(column)}
            column = [done[value] for value in column]
        elif convert is not None:
            column = [convert(value) for value in column]
        values.append(column)
    records = list(zip(*values, strict=True))
    placeholders = ", ".join("?" * len(columns))
    session.connection().exec_driver_sql(
        f"INSERT INTO {JOURNAL.name} ({', '.join(columns)}) VALUES ({placeholders})", records
    )


_SHARED = {"org_id", "purchase_id", "reservation_id", "created_at"}
"""Columns whose values the rows of one write mostly share (one organization, one moment):
each distinct value is converted once."""


def _sqlite_uuid(value: uuid.UUID | None) -> str | None:
    return None if value is None else value.hex  # Uuid: CHAR(32)


def _sqlite_time(value: datetime) -> str:
    # UTCDateTime on SQLite: naive UTC, in SQLAlchemy's DATETIME text form.
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value)


_SQLITE_FORM: dict[str, Callable[[Any], Any]] = {
    "org_id": _sqlite_uuid,
    "user_id": _sqlite_uuid,
    "purchase_id": _sqlite_uuid,
    "reservation_id": _sqlite_uuid,
    "created_at": _sqlite_time,
    "details": _sqlite_json,
}


def _copy(session: Session, rows: list[dict[str, Any]]) -> None:
    """COPY the rows into the journal, in this transaction: several times faster than an
    INSERT of as many rows (no arrays to parse, no plan). Called within `run_sync`."""
    # A record a row, by name (rows need not share key order) in one C call (`itemgetter`)
    # rather than a lookup per column and row; the details last, as the JSON column
    # stores them.
    columns = [name for name in rows[0] if name != "details"]
    values, dumps = itemgetter(*columns), json.dumps
    records = [
        (*values(row), None if row["details"] is None else dumps(row["details"])) for row in rows
    ]
    columns.append("details")
    driver = session.connection().connection.driver_connection
    assert driver is not None
    await_only(driver.copy_records_to_table(JOURNAL.name, records=records, columns=columns))


def _link(
    session: Session, pending: list[Entry], org_id: uuid.UUID | None
) -> dict[chain.Chain, str]:
    """Chain the entries after their chains' heads, read now: this transaction holds the
    lock every writer of those chains takes (the user's row or the organization's)."""
    heads = _heads(session, {chain.chain_of(entry.row) for entry in pending}, org_id)
    for entry in pending:
        key = chain.chain_of(entry.row)
        previous = heads.get(key)
        entry.row["prev_hash"] = previous
        entry.row["hash"] = heads[key] = chain.link(previous, entry.row)
    return heads


HEADS_PER_QUERY = 10_000  # PostgreSQL's protocol takes at most 32,767 parameters


def _heads(
    session: Session, chains: set[chain.Chain], org_id: uuid.UUID | None = None
) -> dict[chain.Chain, str]:
    """The chains' heads as stored; with `org_id`, chains of that organization only (the
    statements name it)."""
    heads: dict[chain.Chain, str] = {}
    postgresql = session.get_bind().dialect.name == "postgresql"
    for kind, table in (("user", USERS), ("organization", ORGANIZATIONS)):
        ids = [owner for chain_kind, owner in chains if chain_kind == kind]
        if postgresql and ids:
            # One array parameter: no statement of thousands of parameters to build.
            statement = select(table.c.id, table.c.journal_head).where(
                table.c.id == any_(bindparam("ids", type_=ARRAY(table.c.id.type)))
            )
            if org_id is not None:
                owner_org = table.c.org_id if table is USERS else table.c.id
                statement = statement.where(owner_org == org_id)
            for owner, head in session.execute(statement, {"ids": ids}):
                if head is not None:
                    heads[(kind, owner)] = head
            continue
        for start in range(0, len(ids), HEADS_PER_QUERY):
            some = ids[start : start + HEADS_PER_QUERY]
            statement = select(table.c.id, table.c.journal_head).where(table.c.id.in_(some))
            if org_id is not None:
                # Unary + keeps SQLite on the primary key: with an index on org_id it would
                # walk all of the organization's users (a 10,000-user change: 0.06 s → 0.04 s).
                in_org: ColumnElement[Any] = (
                    type_coerce(literal_column("+users.org_id"), USERS.c.org_id.type)
                    if table is USERS
                    else table.c.id
                )
                statement = statement.where(in_org == org_id)
            for owner, head in session.execute(statement):
                if head is not None:
                    heads[(kind, owner)] = head
    return heads


def _save_heads(
    session: Session, heads: dict[chain.Chain, str], org_id: uuid.UUID | None = None
) -> None:
    """Store the chains' new heads; with `org_id`, the users' update names that organization
    (an organization's own row is found by its id, which is the organization)."""
    for kind, table in (("user", USERS), ("organization", ORGANIZATIONS)):
        rows = [
            {"id": owner, "journal_head": head}
            for (chain_kind, owner), head in heads.items()
            if chain_kind == kind
        ]
        update_many(session, table, "id", rows, org_id=org_id if table is USERS else None)


# One array rather than a row per id, and the sequence named once for the statement (a
# scalar subquery): `pg_get_serial_sequence` as nextval's argument was evaluated once per
# id, and of 10,000 ids took 39 to 47 ms where the ids themselves take about 7.
_NEXT_IDS = text(
    "SELECT array_agg(nextval((SELECT pg_get_serial_sequence('journal_entries', 'id')"
    "::regclass))) FROM generate_series(1, :count)"
)
_LAST_ID = text("SELECT coalesce(max(id), 0) FROM journal_entries")


def _next_ids(session: Session, count: int) -> list[int]:
    if session.get_bind().dialect.name == "postgresql":
        ids: list[int] = session.execute(_NEXT_IDS, {"count": count}).scalar_one()
        return sorted(ids)
    # SQLite: this transaction holds the database's one write lock (BEGIN IMMEDIATE), and
    # entries are never deleted, so the next ids are the ones after the last.
    last: int = session.execute(_LAST_ID).scalar_one()
    return list(range(last + 1, last + 1 + count))


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    _write_pending(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


# --- verify -------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    organizations: int = 0
    users: int = 0
    entries: int = 0
    differences: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.differences


async def verify(
    session: AsyncSession,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> VerifyReport:
    """Replay the whole journal and compare it with every stored balance.

    Checks, for every organization and kind: capacity (= sum of unexpired purchases) and
    allocated (= sum of its users' allowances); for every user and kind: allowance, used
    and reserved (= sum of open reservations); that every entry's balances-after equal
    the replay at that entry; and every hash chain (journal/chain.py). On PostgreSQL a big
    journal's chains are checked by `workers` processes (journal/verify.py), all in the
    snapshot of `session`'s transaction.
    """
    outcome = await verify_module.run(session, progress=progress, workers=workers)
    return VerifyReport(
        organizations=outcome.organizations,
        users=outcome.users,
        entries=outcome.entries,
        differences=outcome.differences,
    )


@dataclass
class JournalFilter:
    org_id: uuid.UUID
    user_id: uuid.UUID | None = None
    kind: Kind | None = None
    action: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100
