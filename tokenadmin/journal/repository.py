from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, func, select
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
