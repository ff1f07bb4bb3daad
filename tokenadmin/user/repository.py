from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from tokenadmin.models import User


async def get(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    statement = select(User).where(User.id == user_id).execution_options(populate_existing=True)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == email.lower()))


async def find_in_org(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    ids: Sequence[uuid.UUID] = (),
    emails: Sequence[str] = (),
    lock: bool = False,
) -> list[User]:
    """Users of one organization named by id or email, in id order (the lock order)."""
    found: list[User] = []
    for start in range(0, max(len(ids), len(emails), 1), 5000):
        id_chunk, email_chunk = ids[start : start + 5000], emails[start : start + 5000]
        if not id_chunk and not email_chunk:
            break
        condition = or_(User.id.in_(id_chunk), User.email.in_(email_chunk))
        statement = (
            select(User)
            .where(User.org_id == org_id, condition)
            .order_by(User.id)
            .execution_options(populate_existing=True)
        )
        if lock:
            statement = statement.with_for_update()
        found.extend((await session.scalars(statement)).all())
    return sorted({u.id: u for u in found}.values(), key=lambda u: u.id)


SORTABLE: dict[str, InstrumentedAttribute[Any]] = {
    "name": User.name,
    "email": User.email,
    "role": User.role,
    "status": User.status,
    "max_tokens": User.max_tokens,
    "max_train_tokens": User.max_train_tokens,
    "last_activity_at": User.last_activity_at,
    "created_at": User.created_at,
}


@dataclass
class UserQuery:
    org_id: uuid.UUID
    period_start: datetime
    search: str | None = None
    status: str | None = None
    role: str | None = None
    near_limit: float | None = None
    sort: str = "name"
    descending: bool = False
    limit: int = 50
    offset: int = 0


def used_column(kind: str, period_start: datetime) -> ColumnElement[int]:
    column = User.inference_used if kind == "inference" else User.training_used
    return case((User.period_start == period_start, column), else_=0)


def _filtered(query: UserQuery) -> Select[User]:
    statement = select(User).where(User.org_id == query.org_id)
    if query.search:
        pattern = f"%{query.search.lower()}%"
        statement = statement.where(
            or_(User.email.like(pattern), func.lower(User.name).like(pattern))
        )
    if query.status:
        statement = statement.where(User.status == query.status)
    if query.role:
        statement = statement.where(User.role == query.role)
    if query.near_limit is not None:
        # Near the limit: used + reserved has reached this share of the allowance.
        share = query.near_limit
        statement = statement.where(
            or_(
                and_(
                    User.max_tokens > 0,
                    used_column("inference", query.period_start) + User.inference_reserved
                    >= User.max_tokens * share,
                ),
                and_(
                    User.max_train_tokens > 0,
                    used_column("training", query.period_start) + User.training_reserved
                    >= User.max_train_tokens * share,
                ),
            )
        )
    return statement


async def search(session: AsyncSession, query: UserQuery) -> tuple[Sequence[User], int]:
    statement = _filtered(query)
    order: ColumnElement[Any] | InstrumentedAttribute[Any]
    if query.sort in ("inference_used", "training_used"):
        order = used_column(query.sort.split("_")[0], query.period_start)
    else:
        order = SORTABLE[query.sort]
    # Never active sorts as least recent, on every database.
    direction = order.desc().nulls_last() if query.descending else order.asc().nulls_first()
    ordering = [direction, User.id]
    page = statement.order_by(*ordering).limit(query.limit).offset(query.offset)
    users = (await session.scalars(page)).all()
    total = await session.scalar(select(func.count()).select_from(statement.subquery()))
    return users, int(total or 0)


async def count_in_org(session: AsyncSession, org_id: uuid.UUID) -> int:
    total = await session.scalar(select(func.count()).where(User.org_id == org_id))
    return int(total or 0)


def table_rows(org_id: uuid.UUID, period_start: datetime) -> Select[*tuple[Any, ...]]:
    """The user table as plain columns (no ORM objects), by email: for exports."""
    return (
        select(
            User.email,
            User.name,
            User.role,
            User.status,
            User.max_tokens,
            User.max_train_tokens,
            used_column("inference", period_start),
            used_column("training", period_start),
            User.last_activity_at,
        )
        .where(User.org_id == org_id)
        .order_by(User.email)
    )


async def emails_in_use(session: AsyncSession, emails: Sequence[str]) -> set[str]:
    """Which of these emails belong to a user of any organization."""
    found: set[str] = set()
    for start in range(0, len(emails), 5000):
        chunk = emails[start : start + 5000]
        found.update(await session.scalars(select(User.email).where(User.email.in_(chunk))))
    return found
