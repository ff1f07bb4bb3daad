"""The metering engine: a group of an organization's usage operations decided as a set.

`service.meter` decides a group through the ORM, about a dozen statements per group. The
engine does the same work in four statements and plain rows, by the same rules, under
the same locks taken in the same order:

1. (PostgreSQL) one statement takes the organization's metering lock (shared), checks
   that the caller's key is live, probes the group's idempotency keys one by one on their
   index and claims them (`idempotency.claim`);
2. one statement locks the named users of the organization in id order (FOR UPDATE) and
   reads them with their organization, journal heads included;
3. Python decides each operation in order (`service._debit`'s rules: the user deactivated,
   the allowance, thresholds crossed) and chains each user's journal entries from the head
   it read; one statement takes the entries' ids, in order;
4. one statement writes the users' counters and heads, the journal entries and the
   idempotency records (PostgreSQL: data-modifying CTEs over arrays; SQLite: executemany,
   which costs no round trip).

The answers are given after the commit, as before.

The engine takes a group when its caller is an organization's key and every operation is
usage with its tokens given. Anything else goes to `service.meter` (`fallback`), in the
same transaction and before anything is written, so its answers are the ORM path's own:
- reservations, commits, releases and expiries; usage charged at a model's rates;
  operator (platform) callers, whose organization is known only from the users named;
- an organization due for upkeep (a purchase expired, a new period), or whose capacity
  binds (SPEC rule 3: usage must also fit the organization's period usage);
- a user whose counters belong to an earlier period (the reset is journaled first);
- usage that does not fit while the user holds reservations (overdue ones expire first);
- a group naming no user of the organization.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import Column, Table, TextClause, bindparam, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import metrics
from tokenadmin.act import Act
from tokenadmin.database import Retry, lock_key
from tokenadmin.errors import (
    Conflict,
    InsufficientTokens,
    NotFound,
    TokenAdminError,
    Unauthenticated,
)
from tokenadmin.events import service as events
from tokenadmin.idempotency import service as idempotency
from tokenadmin.journal import chain
from tokenadmin.journal.service import Entry
from tokenadmin.models import ApiKey, IdempotencyRecord, JournalEntry, Organization, User
from tokenadmin.tokens import Kind, current_period
from tokenadmin.usage import repository, service

USERS = cast(Table, User.__table__)
ORGANIZATIONS = cast(Table, Organization.__table__)
JOURNAL = cast(Table, JournalEntry.__table__)
RECORDS = cast(Table, IdempotencyRecord.__table__)
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

    def allowance(self, kind: Kind) -> int:
        return self.max_tokens if kind is Kind.inference else self.max_train_tokens

    def used(self, kind: Kind) -> int:
        return self.inference_used if kind is Kind.inference else self.training_used

    def reserved(self, kind: Kind) -> int:
        return self.inference_reserved if kind is Kind.inference else self.training_reserved

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

    def binds(self) -> bool:
        """Whether rule 3 binds for a kind (`Organization.over_allocated`)."""
        return (
            self.allocated_inference > self.capacity_inference
            or self.allocated_training > self.capacity_training
        )


def takes(caller: service.Caller, operations: Sequence[service.Operation]) -> bool:
    """Whether the engine takes this group (else `service.meter` does, as always)."""
    if caller.org_id is None:
        return False
    return all(
        op.action == "usage" and op.tokens is not None and op.user is not None and op.kind
        for op in operations
    )


async def meter_group(
    session: AsyncSession,
    *,
    act: Act,
    caller: service.Caller,
    operations: Sequence[service.Operation],
    requests: Sequence[idempotency.Keyed | None],
    answer: idempotency.Render[service.Metered],
    idempotency_ttl: timedelta,
    fallback: Fallback,
) -> list[idempotency.Answer]:
    """Meter a group (`takes`) in this transaction; `fallback` meters it if the engine
    can't (the module's docstring says when)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    assert caller.org_id is not None
    org_id = caller.org_id
    scope = caller.idempotency_scope
    keys = list(dict.fromkeys(r.key for r in requests if r is not None))
    if postgres:
        live, busy, stored = await _begin_postgres(session, caller, org_id, keys)
    else:
        live = caller.key_id is None or await _key_live(session, caller.key_id, org_id)
        busy, stored = set(), await idempotency.find(session, scope, keys)
    if not live:
        revoked = idempotency.refused(_revoked())
        return [revoked] * len(operations)
    group: idempotency.Group[service.Metered] = idempotency.Group.sort(requests, stored)
    group.mark_busy(busy & group.first.keys())
    try:
        decided = await _decide(session, act, org_id, [operations[i] for i in group.todo])
    except _Fallback:
        return await fallback(session)
    outcomes, users, entries, counted = decided
    await _take_ids(session, entries, postgres)
    group.settle(outcomes, answer)
    final, records = group.finish(scope, act.now, idempotency_ttl)
    changed = [user for user in users if user.changed]
    try:
        if postgres:
            await _write_postgres(session, org_id, changed, entries, records)
        else:
            await _write_sqlite(session, org_id, changed, entries, records)
    except IntegrityError as error:
        raise Retry("an idempotency key was stored by another transaction first") from error
    for action, kind, tokens, refusal in counted:
        metrics.metered(session, action, org_id, kind, tokens, refusal)
    return final


def _revoked() -> TokenAdminError:
    return Unauthenticated("The API key is not valid or was revoked.")


# --- reading and locking ----------------------------------------------------------------


_BEGIN = text(
    "WITH head AS MATERIALIZED ("
    " SELECT pg_advisory_xact_lock_shared(:lock)::text AS locked,"
    " EXISTS (SELECT 1 FROM api_keys WHERE id = :key_id AND org_id = :org"
    " AND revoked_at IS NULL) AS live,"
    " ARRAY(SELECT k FROM unnest(CAST(:keys AS text[])) AS k"
    " WHERE NOT pg_try_advisory_xact_lock(:space, hashtext(:scope || ' ' || k))) AS busy)"
    " SELECT head.live, head.busy, r.key, r.fingerprint, r.status_code, r.response"
    " FROM head LEFT JOIN (SELECT p.key, p.fingerprint, p.status_code, p.response"
    " FROM unnest(CAST(:keys AS text[])) AS k(key) CROSS JOIN LATERAL"
    " (SELECT s.key, s.fingerprint, s.status_code, s.response FROM idempotency_records AS s"
    " WHERE s.scope = :scope AND s.key = k.key LIMIT 1) AS p) AS r ON true"
)


async def _begin_postgres(
    session: AsyncSession, caller: service.Caller, org_id: uuid.UUID, keys: list[str]
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
    rows = (await session.execute(_BEGIN, parameters)).all()
    live = caller.key_id is None or bool(rows[0][0])
    busy = set(rows[0][1] or ())
    stored = {
        row[2]: idempotency.Stored(row[2], row[3], row[4], row[5])
        for row in rows
        if row[2] is not None
    }
    return live, busy, stored


async def _key_live(session: AsyncSession, key_id: uuid.UUID, org_id: uuid.UUID) -> bool:
    statement = select(ApiKey.id).where(
        ApiKey.id == key_id, ApiKey.org_id == org_id, ApiKey.revoked_at.is_(None)
    )
    return await session.scalar(statement) is not None


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
)
_SPLIT = len(_USER_COLUMNS)


async def _lock_users(
    session: AsyncSession, org_id: uuid.UUID, ids: list[uuid.UUID], emails: list[str]
) -> tuple[list[_User], _Org | None]:
    """Lock the named users of the organization in id order and read them, with their
    organization (read after its metering lock was taken: this statement's snapshot is)."""
    statement = (
        select(
            *(USERS.c[name] for name in _USER_COLUMNS),
            *(ORGANIZATIONS.c[name] for name in _ORG_COLUMNS),
        )
        .join_from(USERS, ORGANIZATIONS, ORGANIZATIONS.c.id == USERS.c.org_id)
        .where(USERS.c.org_id == org_id, repository.named(ids, emails))
        .order_by(USERS.c.id)
        .with_for_update(of=USERS)
    )
    users: list[_User] = []
    org = None
    for row in await session.execute(statement):
        users.append(_User(*row[:_SPLIT]))
        if org is None:
            org = _Org(*row[_SPLIT:])
    return users, org


def _parse_user_ref(ref: str) -> uuid.UUID | str:
    if "@" in ref:
        return ref.lower()
    try:
        return uuid.UUID(ref)
    except ValueError:
        return ref


# --- deciding ---------------------------------------------------------------------------

_Counted = tuple[str, str | None, int | None, TokenAdminError | None]


async def _decide(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    operations: Sequence[service.Operation],
) -> tuple[list[service.Outcome], list[_User], list[Entry], list[_Counted]]:
    """Each operation's outcome, in order, by `service._debit`'s rules; the users (changed
    in place), the journal entries (chained, ids not yet given) and the metrics to count.
    Raises `_Fallback` before anything is written when the group needs the ORM path."""
    refs = [_parse_user_ref(cast(str, op.user)) for op in operations]
    if not refs:
        return [], [], [], []
    ids = [r for r in refs if isinstance(r, uuid.UUID)]
    emails = [r for r in refs if isinstance(r, str)]
    users, org = await _lock_users(session, org_id, ids, emails)
    if org is None or org.binds():
        raise _Fallback
    start = current_period(org, act.now)
    if (org.next_expiry_at is not None and org.next_expiry_at <= act.now) or (
        org.period_start != start
    ):
        raise _Fallback  # maintenance due: `service.MaintenanceDue`
    by_ref: dict[uuid.UUID | str, _User] = {}
    for locked in users:
        if locked.period_start != start:
            raise _Fallback  # the counters of an earlier period are reset first
        by_ref[locked.id] = by_ref[locked.email] = locked
    used_before = {(user.id, kind): user.used(kind) for user in users for kind in Kind}

    outcomes: list[service.Outcome] = []
    entries: list[Entry] = []
    counted: list[_Counted] = []
    heads = {user.id: user.journal_head for user in users}
    for op, ref in zip(operations, refs, strict=True):
        kind, tokens = cast(Kind, op.kind), cast(int, op.tokens)
        user = by_ref.get(ref)
        refusal: TokenAdminError | None = None
        if user is None:
            refusal = NotFound(f"No user '{op.user}' in this organization.", code="user_not_found")
        elif user.status != "active":
            refusal = Conflict(
                f"{user.email} is deactivated and can't use tokens.", code="user_deactivated"
            )
        else:
            left = user.remaining(kind)
            if tokens > left and user.reserved(kind):
                raise _Fallback  # overdue reservations expire first
            if tokens > left:
                refusal = _insufficient(user, kind, tokens, left)
        if refusal is not None:
            outcomes.append(refusal)
            counted.append((op.action, kind.value, tokens, refusal))
            continue
        assert user is not None
        user.add_used(kind, tokens)
        user.changed = True
        last = user.last_activity_at
        if last is None or act.now - last >= ACTIVITY_RESOLUTION or act.now < last:
            user.last_activity_at = act.now
        row = _entry(act, org.id, user, "usage", kind, tokens, op.details)
        row["prev_hash"] = heads[user.id]
        row["hash"] = heads[user.id] = chain.link(heads[user.id], row)
        entry = Entry(row)
        entries.append(entry)
        balance = service.Balance(
            user.allowance(kind), user.used(kind), user.reserved(kind), user.remaining(kind)
        )
        outcomes.append(service.Used(user.id, user.email, kind, tokens, balance, entry))
        counted.append((op.action, kind.value, tokens, None))
    for user in users:
        user.journal_head = heads[user.id]
    # Under the users' row locks: one transaction sees each crossing of a threshold.
    for user in users:
        for kind in Kind:
            after, was = user.used(kind), used_before[(user.id, kind)]
            if after <= was:
                continue
            for percent in events.crossed(was, after, user.allowance(kind), org.alert_thresholds):
                await events.user_threshold_passed(session, act, org.id, user, kind, percent, start)
    return outcomes, users, entries, counted


def _insufficient(user: _User, kind: Kind, tokens: int, left: int) -> InsufficientTokens:
    # `service._insufficient` when the organization's capacity does not bind.
    return InsufficientTokens(
        f"{tokens:,} {kind} tokens requested but {user.email} has only {left:,} left this period.",
        details={
            "user_id": str(user.id),
            "kind": kind.value,
            "requested": tokens,
            "remaining": left,
            "limited_by": "user",
        },
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
        "allowance_after": user.allowance(kind),
        "used_after": user.used(kind),
        "reserved_after": user.reserved(kind),
        "details": details,
    }


# --- writing ----------------------------------------------------------------------------

_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('journal_entries', 'id'))"
    " FROM generate_series(1, :count)"
)
_LAST_ID = text("SELECT coalesce(max(id), 0) FROM journal_entries")


async def _take_ids(session: AsyncSession, entries: list[Entry], postgres: bool) -> None:
    """Give the entries their ids, in order: taken now, with the users' rows locked, so a
    user's entries are in id order in the order they were written."""
    if not entries:
        return
    if postgres:
        ids = sorted((await session.execute(_NEXT_IDS, {"count": len(entries)})).scalars())
    else:
        # The writer lock is held (BEGIN IMMEDIATE) and entries are never deleted.
        last: int = (await session.execute(_LAST_ID)).scalar_one()
        ids = list(range(last + 1, last + 1 + len(entries)))
    for entry, entry_id in zip(entries, ids, strict=True):
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


def _arrays(table: Table, names: Sequence[str], prefix: str) -> str:
    columns: list[Column[Any]] = [table.c[name] for name in names]
    return ", ".join(
        f"CAST(:{prefix}{c.name} AS {c.type.compile(dialect=_POSTGRESQL)}[])" for c in columns
    )


@cache
def _write_statement(users: bool, journal: bool, records: bool) -> TextClause:
    """One statement writing the group: users' counters and heads, journal, records."""
    parts = []
    if users:
        assignments = ", ".join(f"{name} = v.{name}" for name in _COUNTERS)
        parts.append(
            f"u AS (UPDATE users AS t SET {assignments}"
            f" FROM unnest({_arrays(USERS, ('id', *_COUNTERS), 'u_')})"
            f" AS v(id, {', '.join(_COUNTERS)}) WHERE t.org_id = :org AND t.id = v.id)"
        )
    if journal:
        parts.append(
            f"j AS (INSERT INTO journal_entries ({', '.join(_JOURNAL_COLUMNS)})"
            f" SELECT * FROM unnest({_arrays(JOURNAL, _JOURNAL_COLUMNS, 'j_')}))"
        )
    if records:
        parts.append(
            f"i AS (INSERT INTO idempotency_records ({', '.join(_RECORD_COLUMNS)})"
            f" SELECT * FROM unnest({_arrays(RECORDS, _RECORD_COLUMNS, 'i_')}))"
        )
    return text(f"WITH {', '.join(parts)} SELECT 1")


async def _write_postgres(
    session: AsyncSession,
    org_id: uuid.UUID,
    users: list[_User],
    entries: list[Entry],
    records: list[dict[str, Any]],
) -> None:
    if not (users or entries or records):
        return
    parameters: dict[str, Any] = {"org": org_id}
    if users:
        parameters["u_id"] = [user.id for user in users]
        for name in _COUNTERS:
            parameters[f"u_{name}"] = [getattr(user, name) for user in users]
    if entries:
        parameters["j_id"] = [entry.id for entry in entries]
        for name in _JOURNAL_COLUMNS[1:]:
            parameters[f"j_{name}"] = [entry.row[name] for entry in entries]
        parameters["j_details"] = [
            None if entry.row["details"] is None else json.dumps(entry.row["details"])
            for entry in entries
        ]
    if records:
        for name in _RECORD_COLUMNS:
            parameters[f"i_{name}"] = [record[name] for record in records]
    statement = _write_statement(bool(users), bool(entries), bool(records))
    await session.execute(statement, parameters)


_UPDATE_USERS = (
    update(USERS)
    .where(USERS.c.id == bindparam("_id"), USERS.c.org_id == bindparam("_org"))
    .values({name: bindparam(f"_{name}") for name in _COUNTERS})
)


async def _write_sqlite(
    session: AsyncSession,
    org_id: uuid.UUID,
    users: list[_User],
    entries: list[Entry],
    records: list[dict[str, Any]],
) -> None:
    if users:
        rows = [
            {"_id": user.id, "_org": org_id, **{f"_{n}": getattr(user, n) for n in _COUNTERS}}
            for user in users
        ]
        await session.execute(_UPDATE_USERS, rows)
    if entries:
        await session.execute(insert(JOURNAL), [{"id": e.id, **e.row} for e in entries])
    if records:
        await session.execute(insert(RECORDS), records)
