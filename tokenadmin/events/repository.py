"""The SQL of events: an insert that does nothing when the crossing is already recorded,
the conditional updates of alert states, and the lists."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.models import AlertState, Event, Purchase, User


def _insert(session: AsyncSession) -> Any:
    return sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert


def _matched(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


async def insert_once(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    user_id: uuid.UUID | None,
    kind: str,
    key: str,
    data: dict[str, Any],
    message: str,
    created_at: datetime,
) -> bool:
    """Insert the event unless (org_id, key) exists; True when a row was inserted."""
    result = await session.execute(
        _insert(session)(Event)
        .values(
            id=uuid7(),
            org_id=org_id,
            user_id=user_id,
            kind=kind,
            key=key,
            data=data,
            message=message,
            created_at=created_at,
        )
        .on_conflict_do_nothing(index_elements=["org_id", "key"])
    )
    return _matched(result) == 1


async def begin_episode(
    session: AsyncSession, org_id: uuid.UUID, subject: str, now: datetime
) -> int | None:
    """Mark the condition as holding; its new episode number when this call began it, None
    when it already held."""
    await session.execute(
        _insert(session)(AlertState)
        .values(org_id=org_id, subject=subject, active=False, episode=0, changed_at=now)
        .on_conflict_do_nothing(index_elements=["org_id", "subject"])
    )
    started = _matched(
        await session.execute(
            update(AlertState)
            .where(
                AlertState.org_id == org_id,
                AlertState.subject == subject,
                AlertState.active.is_(False),
            )
            .values(active=True, episode=AlertState.episode + 1, changed_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    if not started:
        return None
    episode = await session.scalar(
        select(AlertState.episode).where(AlertState.org_id == org_id, AlertState.subject == subject)
    )
    return int(episode or 0)


async def end_episode(
    session: AsyncSession, org_id: uuid.UUID, subject: str, now: datetime
) -> None:
    """The condition no longer holds: its next beginning is a new crossing (re-armed)."""
    await session.execute(
        update(AlertState)
        .where(
            AlertState.org_id == org_id,
            AlertState.subject == subject,
            AlertState.active.is_(True),
        )
        .values(active=False, changed_at=now)
        .execution_options(synchronize_session=False)
    )


async def purchases_expiring(
    session: AsyncSession, org_id: uuid.UUID, now: datetime, until: datetime
) -> Sequence[Purchase]:
    """Purchases not yet expired whose expiry is after `now` and at or before `until`."""
    statement = select(Purchase).where(
        Purchase.org_id == org_id,
        Purchase.expired_at.is_(None),
        Purchase.expires_at.is_not(None),
        Purchase.expires_at > now,
        Purchase.expires_at <= until,
    )
    return (await session.scalars(statement)).all()


async def users_past(
    session: AsyncSession, org_id: uuid.UUID, period_start: datetime, percent: int
) -> Sequence[User]:
    """Active users whose use of a kind this period is at least `percent` % of their
    allowance of it (allowance above 0)."""
    statement = select(User).where(
        User.org_id == org_id,
        User.status == "active",
        User.period_start == period_start,
        or_(
            (User.max_tokens > 0) & (User.inference_used * 100 >= User.max_tokens * percent),
            (User.max_train_tokens > 0)
            & (User.training_used * 100 >= User.max_train_tokens * percent),
        ),
    )
    return (await session.scalars(statement)).all()


async def threshold_data(
    session: AsyncSession, org_id: uuid.UUID, user_ids: Sequence[uuid.UUID], since: datetime
) -> Sequence[dict[str, Any]]:
    """The data of the threshold events of these users created at or after `since`."""
    statement = select(Event.data).where(
        Event.org_id == org_id,
        Event.kind == "allowance.threshold",
        Event.user_id.in_(user_ids),
        Event.created_at >= since,
    )
    return (await session.scalars(statement)).all()


@dataclass(frozen=True)
class EventQuery:
    org_id: uuid.UUID | None  # None: every organization's (the CLI of an operator)
    user_id: uuid.UUID | None = None
    kind: str | None = None
    since: datetime | None = None
    limit: int = 50
    offset: int = 0


async def search(session: AsyncSession, query: EventQuery) -> tuple[Sequence[Event], int]:
    """Events newest first, one page of them and how many there are."""
    conditions = [] if query.org_id is None else [Event.org_id == query.org_id]
    if query.user_id is not None:
        conditions.append(Event.user_id == query.user_id)
    if query.kind is not None:
        conditions.append(Event.kind == query.kind)
    if query.since is not None:
        conditions.append(Event.created_at >= query.since)
    total = await session.scalar(select(func.count()).select_from(Event).where(*conditions))
    statement = (
        select(Event)
        .where(*conditions)
        .order_by(Event.created_at.desc(), Event.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    )
    return (await session.scalars(statement)).all(), int(total or 0)
