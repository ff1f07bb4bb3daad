from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import Organization, Purchase, User
from tokenadmin.tokens import Kind


async def get(
    session: AsyncSession, org_id: uuid.UUID, *, fresh: bool = False
) -> Organization | None:
    options = {"populate_existing": True} if fresh else {}
    return await session.get(Organization, org_id, **options)  # type: ignore[arg-type]


async def list_all(session: AsyncSession) -> Sequence[Organization]:
    return (await session.scalars(select(Organization).order_by(Organization.name))).all()


async def due_purchases(
    session: AsyncSession, org_id: uuid.UUID, now: datetime
) -> Sequence[Purchase]:
    statement = (
        select(Purchase)
        .where(
            Purchase.org_id == org_id,
            Purchase.expired_at.is_(None),
            Purchase.expires_at.is_not(None),
            Purchase.expires_at <= now,
        )
        .order_by(Purchase.expires_at)
    )
    return (await session.scalars(statement)).all()


async def next_expiry(session: AsyncSession, org_id: uuid.UUID) -> datetime | None:
    # min() keeps the column's type, so the value comes back as an aware UTC datetime.
    return await session.scalar(
        select(func.min(Purchase.expires_at)).where(
            Purchase.org_id == org_id,
            Purchase.expired_at.is_(None),
            Purchase.expires_at.is_not(None),
        )
    )


async def purchases(session: AsyncSession, org_id: uuid.UUID) -> Sequence[Purchase]:
    statement = select(Purchase).where(Purchase.org_id == org_id).order_by(Purchase.created_at)
    return (await session.scalars(statement)).all()


async def get_purchase(session: AsyncSession, purchase_id: uuid.UUID) -> Purchase | None:
    return await session.get(Purchase, purchase_id)


async def users_with_retained_allowance(session: AsyncSession, org_id: uuid.UUID) -> Sequence[User]:
    """Deactivated users still holding what they used in a past period."""
    statement = select(User).where(
        User.org_id == org_id,
        User.status == "deactivated",
        or_(User.max_tokens > 0, User.max_train_tokens > 0),
    )
    return (await session.scalars(statement)).all()


async def users_with_usage_since(
    session: AsyncSession, org_id: uuid.UUID, period_start: datetime
) -> Sequence[User]:
    """Users whose counters say they used tokens in the period starting at `period_start`."""
    statement = select(User).where(
        User.org_id == org_id,
        User.period_start == period_start,
        or_(User.inference_used != 0, User.training_used != 0),
    )
    return (await session.scalars(statement)).all()


async def period_usage(
    session: AsyncSession, org_id: uuid.UUID, period_start: datetime
) -> dict[Kind, tuple[int, int]]:
    """(used, reserved) per kind over the organization's users in the given period."""
    current = User.period_start == period_start
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(case((current, User.inference_used), else_=0)), 0),
                func.coalesce(func.sum(User.inference_reserved), 0),
                func.coalesce(func.sum(case((current, User.training_used), else_=0)), 0),
                func.coalesce(func.sum(User.training_reserved), 0),
            ).where(User.org_id == org_id)
        )
    ).one()
    return {
        Kind.inference: (int(row[0]), int(row[1])),
        Kind.training: (int(row[2]), int(row[3])),
    }


async def count_below_minimum(
    session: AsyncSession, org_id: uuid.UUID, kind: Kind, minimum: int
) -> int:
    column = User.max_tokens if kind is Kind.inference else User.max_train_tokens
    value = await session.scalar(
        select(func.count()).where(User.org_id == org_id, User.status == "active", column < minimum)
    )
    return int(value or 0)


async def move_period_start(
    session: AsyncSession, org_id: uuid.UUID, old: datetime, new: datetime
) -> None:
    """Relabel counters of the current period with its new start (a time zone change)."""
    await session.execute(
        update(User)
        .where(User.org_id == org_id, User.period_start == old)
        .values(period_start=new)
        .execution_options(synchronize_session=False)
    )
