from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from tokenadmin.models import JournalEntry, Organization, Purchase, Reservation, User
from tokenadmin.schemas import storable
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    from tokenadmin.journal.service import JournalFilter

_REPLAY_COLUMNS = (
    JournalEntry.id,
    JournalEntry.org_id,
    JournalEntry.user_id,
    JournalEntry.kind,
    JournalEntry.capacity_delta,
    JournalEntry.allocated_delta,
    JournalEntry.allowance_delta,
    JournalEntry.used_delta,
    JournalEntry.reserved_delta,
    JournalEntry.capacity_after,
    JournalEntry.allocated_after,
    JournalEntry.allowance_after,
    JournalEntry.used_after,
    JournalEntry.reserved_after,
    # For the hash chains: the rest of what an entry says, and its hashes.
    JournalEntry.purchase_id,
    JournalEntry.reservation_id,
    JournalEntry.created_at,
    JournalEntry.actor,
    JournalEntry.action,
    JournalEntry.amount,
    JournalEntry.reason,
    JournalEntry.details,
    JournalEntry.prev_hash,
    JournalEntry.hash,
)


def entries_in_order(session: Session) -> Iterator[Row[Any]]:
    """Every entry, oldest first, fetched in batches (a synchronous session: called through
    `AsyncSession.run_sync`, so a million rows are not a million awaits)."""
    statement = select(*_REPLAY_COLUMNS).order_by(JournalEntry.id)
    # On the connection, not the ORM session: plain rows, without the ORM's loading work.
    yield from session.connection().execute(statement.execution_options(yield_per=10_000))


async def all_organizations(session: AsyncSession) -> Sequence[Organization]:
    return (await session.scalars(select(Organization).order_by(Organization.id))).all()


async def stream_users(session: AsyncSession) -> AsyncIterator[User]:
    result = await session.stream_scalars(
        select(User).order_by(User.id).execution_options(yield_per=5000)
    )
    async for user in result:
        yield user


@dataclass
class OrganizationSums:
    capacity: dict[Kind, int]
    allowances: dict[Kind, int]


async def organization_sums(session: AsyncSession, org_id: uuid.UUID) -> OrganizationSums:
    purchases = (
        await session.execute(
            select(
                func.coalesce(func.sum(Purchase.inference_amount), 0),
                func.coalesce(func.sum(Purchase.training_amount), 0),
            ).where(Purchase.org_id == org_id, Purchase.expired_at.is_(None))
        )
    ).one()
    allowances = (
        await session.execute(
            select(
                func.coalesce(func.sum(User.max_tokens), 0),
                func.coalesce(func.sum(User.max_train_tokens), 0),
            ).where(User.org_id == org_id)
        )
    ).one()
    return OrganizationSums(
        capacity={Kind.inference: int(purchases[0]), Kind.training: int(purchases[1])},
        allowances={Kind.inference: int(allowances[0]), Kind.training: int(allowances[1])},
    )


async def open_reservation_sums(session: AsyncSession) -> dict[tuple[uuid.UUID, Kind], int]:
    rows = await session.execute(
        select(Reservation.user_id, Reservation.kind, func.sum(Reservation.amount))
        .where(Reservation.status == "open")
        .group_by(Reservation.user_id, Reservation.kind)
    )
    return {(user_id, Kind(kind)): int(total) for user_id, kind, total in rows}


async def list_entries(session: AsyncSession, query: JournalFilter) -> Sequence[JournalEntry]:
    if not all(storable(text) for text in (query.action or "", query.actor or "")):
        return []  # no entry holds NUL or an unpaired surrogate; PostgreSQL can't compare them
    statement = select(JournalEntry).where(JournalEntry.org_id == query.org_id)
    if query.user_id is not None:
        statement = statement.where(JournalEntry.user_id == query.user_id)
    if query.kind is not None:
        statement = statement.where(JournalEntry.kind == query.kind.value)
    if query.action is not None:
        statement = statement.where(JournalEntry.action == query.action)
    if query.actor is not None:
        # Literally: % and _ in a key's name are characters to find, not wildcards.
        statement = statement.where(JournalEntry.actor.icontains(query.actor, autoescape=True))
    if query.since is not None:
        statement = statement.where(JournalEntry.created_at >= query.since)
    if query.until is not None:
        statement = statement.where(JournalEntry.created_at < query.until)
    if query.before_id is not None:
        statement = statement.where(JournalEntry.id < query.before_id)
    statement = statement.order_by(JournalEntry.id.desc()).limit(query.limit)
    return (await session.scalars(statement)).all()


# --- saved allowance batches (allowance/revert.py) ------------------------------------------

SAVED = "allowance_changed"
"""The action of a saved allowance change: its entries share `details.batch`."""


def _batch_of() -> Any:
    return JournalEntry.details["batch"].as_string()


def _reverts_of() -> Any:
    return JournalEntry.details["reverts"].as_string()


@dataclass
class BatchRow:
    """A saved batch as the journal tells it: one row per batch, its entries summed."""

    batch: str
    created_at: Any
    actor: str
    reason: str | None
    entries: int
    users: int
    inference_delta: int
    training_delta: int
    reverts: str | None


async def list_batches(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    before: str | None,
    limit: int,
    only: str | None = None,
) -> list[BatchRow]:
    """The organization's saved batches, newest first (batch ids are UUIDv7: they sort by
    time), `limit` of them older than the batch `before`; or only the batch `only`."""
    batch = _batch_of()
    entries = select(
        batch.label("batch"),
        _reverts_of().label("reverts"),
        JournalEntry.created_at,
        JournalEntry.actor,
        JournalEntry.reason,
        JournalEntry.user_id,
        JournalEntry.kind,
        JournalEntry.allowance_delta,
    ).where(JournalEntry.org_id == org_id, JournalEntry.action == SAVED, batch.is_not(None))
    if before is not None:
        entries = entries.where(batch < before)
    if only is not None:
        entries = entries.where(batch == only)
    # Grouped outside: PostgreSQL groups by a JSON path only when it is the very same
    # expression, and a path written twice is two bound parameters.
    e = entries.subquery()
    statement = (
        select(
            e.c.batch,
            func.min(e.c.created_at),
            func.min(e.c.actor),
            func.min(e.c.reason),
            func.count(),
            func.count(func.distinct(e.c.user_id)),
            func.sum(case((e.c.kind == Kind.inference.value, e.c.allowance_delta), else_=0)),
            func.sum(case((e.c.kind == Kind.training.value, e.c.allowance_delta), else_=0)),
            func.min(e.c.reverts),
        )
        .group_by(e.c.batch)
        .order_by(e.c.batch.desc())
        .limit(limit)
    )
    return [
        BatchRow(
            batch=row[0],
            created_at=row[1],
            actor=row[2],
            reason=row[3],
            entries=int(row[4]),
            users=int(row[5]),
            inference_delta=int(row[6] or 0),
            training_delta=int(row[7] or 0),
            reverts=row[8],
        )
        for row in await session.execute(statement)
    ]


async def batch_entries(
    session: AsyncSession, org_id: uuid.UUID, batch: str
) -> Sequence[JournalEntry]:
    """The entries of one saved batch, in the order they were written."""
    statement = (
        select(JournalEntry)
        .where(JournalEntry.org_id == org_id, JournalEntry.action == SAVED, _batch_of() == batch)
        .order_by(JournalEntry.id)
    )
    return (await session.scalars(statement)).all()


@dataclass
class RevertRow:
    """A batch that reverted another: when and by whom."""

    reverted: str
    batch: str
    created_at: Any
    actor: str


async def reverts_of(
    session: AsyncSession, org_id: uuid.UUID, batches: Sequence[str]
) -> dict[str, RevertRow]:
    """For each of `batches` that was reverted, the batch that reverted it."""
    if not batches:
        return {}
    reverts = _reverts_of()
    e = (
        select(
            reverts.label("reverted"),
            _batch_of().label("batch"),
            JournalEntry.created_at,
            JournalEntry.actor,
        )
        .where(
            JournalEntry.org_id == org_id,
            JournalEntry.action == SAVED,
            reverts.in_(list(batches)),
        )
        .subquery()
    )
    statement = select(
        e.c.reverted, e.c.batch, func.min(e.c.created_at), func.min(e.c.actor)
    ).group_by(e.c.reverted, e.c.batch)
    return {
        row[0]: RevertRow(row[0], row[1], row[2], row[3])
        for row in await session.execute(statement)
    }


USERS_PER_QUERY = 5_000


async def allowance_changes_since(
    session: AsyncSession, user_ids: Sequence[uuid.UUID], after_id: int
) -> dict[tuple[uuid.UUID, Kind], list[JournalEntry]]:
    """The entries that changed the allowances of these users after entry `after_id`, per
    user and kind, oldest first."""
    found: dict[tuple[uuid.UUID, Kind], list[JournalEntry]] = {}
    for start in range(0, len(user_ids), USERS_PER_QUERY):
        statement = (
            select(JournalEntry)
            .where(
                JournalEntry.user_id.in_(user_ids[start : start + USERS_PER_QUERY]),
                JournalEntry.id > after_id,
                JournalEntry.allowance_delta != 0,
            )
            .order_by(JournalEntry.id)
        )
        for entry in await session.scalars(statement):
            if entry.user_id is not None and entry.kind is not None:
                found.setdefault((entry.user_id, Kind(entry.kind)), []).append(entry)
    return found
