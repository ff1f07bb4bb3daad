"""The SQL of allocation policies: their rows, the users each rule looks at, the moves log
and boosts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import AllocationPolicy, Boost, PolicyMove, User
from tokenadmin.tokens import ALLOWANCE_FIELD, Kind
from tokenadmin.user.repository import used_column

MAX_CANDIDATES = 50_000
"""The most users one rule of one kind moves in one run; the next run takes the rest."""


async def policies(
    session: AsyncSession, org_id: uuid.UUID, *, lock: bool = False
) -> dict[Kind, AllocationPolicy]:
    statement = select(AllocationPolicy).where(AllocationPolicy.org_id == org_id)
    if lock:
        statement = statement.with_for_update()
    rows = (await session.scalars(statement)).all()
    return {Kind(row.kind): row for row in rows}


async def orgs_with_work(session: AsyncSession, now: datetime) -> list[uuid.UUID]:
    """Organizations with an enabled policy or a boost due to end."""
    enabled = select(AllocationPolicy.org_id).where(AllocationPolicy.enabled.is_(True))
    due = select(Boost.org_id).where(Boost.state == "active", Boost.ends_at <= now)
    found = set((await session.scalars(enabled)).all()) | set((await session.scalars(due)).all())
    return sorted(found)


def _allowance(kind: Kind):  # type: ignore[no-untyped-def]
    return getattr(User, ALLOWANCE_FIELD[kind])


async def over_trigger(
    session: AsyncSession,
    org_id: uuid.UUID,
    kind: Kind,
    period_start: datetime,
    trigger_percent: int,
    ceiling: int,
) -> Sequence[User]:
    """Active users of one kind whose used and reserved tokens reached `trigger_percent` %
    of their allowance, below the ceiling; the fullest first."""
    allowance = _allowance(kind)
    reserved = User.inference_reserved if kind is Kind.inference else User.training_reserved
    committed = used_column(kind.value, period_start) + reserved
    statement = (
        select(User)
        .where(
            User.org_id == org_id,
            User.status == "active",
            allowance > 0,
            allowance < ceiling,
            committed * 100 >= allowance * trigger_percent,
        )
        .order_by((committed * 1.0 / allowance).desc(), User.id)
        .limit(MAX_CANDIDATES)
    )
    return (await session.scalars(statement)).all()


async def idle(
    session: AsyncSession, org_id: uuid.UUID, kind: Kind, since: datetime, floor: int
) -> Sequence[User]:
    """Active users with no activity since `since` (or, never active, created before it)
    whose allowance of `kind` is above `floor`."""
    statement = (
        select(User)
        .where(
            User.org_id == org_id,
            User.status == "active",
            _allowance(kind) > floor,
            or_(
                User.last_activity_at < since,
                and_(User.last_activity_at.is_(None), User.created_at < since),
            ),
        )
        .order_by(User.id)
        .limit(MAX_CANDIDATES)
    )
    return (await session.scalars(statement)).all()


async def last_increases(
    session: AsyncSession, user_ids: Sequence[uuid.UUID], kind: Kind, since: datetime
) -> set[uuid.UUID]:
    """Of `user_ids`, those the policy raised (auto-increase) of `kind` after `since`."""
    found: set[uuid.UUID] = set()
    ids = list(user_ids)
    for start in range(0, len(ids), 5000):
        statement = select(PolicyMove.user_id).where(
            PolicyMove.user_id.in_(ids[start : start + 5000]),
            PolicyMove.kind == kind.value,
            PolicyMove.rule == "increase",
            PolicyMove.created_at > since,
        )
        found.update((await session.scalars(statement)).all())
    return found


async def moves(
    session: AsyncSession, org_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[Sequence[tuple[PolicyMove, User]], int]:
    """The organization's policy moves, newest first, each with its user."""
    statement = (
        select(PolicyMove, User)
        .join(User, User.id == PolicyMove.user_id)
        .where(PolicyMove.org_id == org_id)
        .order_by(PolicyMove.created_at.desc(), PolicyMove.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = [(move, user) for move, user in (await session.execute(statement)).all()]
    total = await session.scalar(
        select(func.count()).select_from(PolicyMove).where(PolicyMove.org_id == org_id)
    )
    return rows, int(total or 0)


async def boosts(
    session: AsyncSession,
    org_id: uuid.UUID,
    *,
    user_id: uuid.UUID | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[Sequence[tuple[Boost, User]], int]:
    condition = [Boost.org_id == org_id]
    if user_id is not None:
        condition.append(Boost.user_id == user_id)
    if state is not None:
        condition.append(Boost.state == state)
    statement = (
        select(Boost, User)
        .join(User, User.id == Boost.user_id)
        .where(*condition)
        .order_by(Boost.state, Boost.ends_at, Boost.id)
        .limit(limit)
        .offset(offset)
    )
    rows = [(boost, user) for boost, user in (await session.execute(statement)).all()]
    total = await session.scalar(select(func.count()).select_from(Boost).where(*condition))
    return rows, int(total or 0)


async def active_boosted(session: AsyncSession, org_id: uuid.UUID, kind: Kind) -> set[uuid.UUID]:
    statement = select(Boost.user_id).where(
        Boost.org_id == org_id, Boost.kind == kind.value, Boost.state == "active"
    )
    return set((await session.scalars(statement)).all())


async def due_boosts(session: AsyncSession, org_id: uuid.UUID, now: datetime) -> Sequence[Boost]:
    statement = (
        select(Boost)
        .where(Boost.org_id == org_id, Boost.state == "active", Boost.ends_at <= now)
        .order_by(Boost.ends_at, Boost.id)
        .limit(MAX_CANDIDATES)
    )
    return (await session.scalars(statement)).all()


async def get_boost(session: AsyncSession, boost_id: uuid.UUID) -> Boost | None:
    return await session.get(Boost, boost_id, populate_existing=True)
