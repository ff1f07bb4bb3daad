"""The SQL of webhooks and email notifications."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, Select, and_, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import (
    EmailNotification,
    Event,
    NotificationCursor,
    User,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

LATE_COMMIT = timedelta(hours=1)
"""How late an event may commit after its `created_at` and still be fanned out: an event is
stamped with its transaction's start, and becomes visible when that commits."""


def _insert(session: AsyncSession) -> Any:
    return sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert


# --- endpoints ------------------------------------------------------------------------------


async def endpoints_of(session: AsyncSession, org_id: uuid.UUID) -> Sequence[WebhookEndpoint]:
    found = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.org_id == org_id)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return found.all()


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return await session.get(WebhookEndpoint, endpoint_id)


async def lock_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    found = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return found.one_or_none()


async def count_endpoints(session: AsyncSession, org_id: uuid.UUID) -> int:
    return int(
        await session.scalar(select(func.count()).where(WebhookEndpoint.org_id == org_id)) or 0
    )


async def delete_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    """The endpoint, its deliveries and their attempts."""
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
    await session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id))
    await session.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))


# --- fan-out --------------------------------------------------------------------------------


async def enabled_endpoints(session: AsyncSession) -> Sequence[WebhookEndpoint]:
    found = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.enabled.is_(True))
        .order_by(WebhookEndpoint.id)
    )
    return found.all()


async def unsent_events(
    session: AsyncSession, endpoint: WebhookEndpoint, limit: int
) -> Sequence[uuid.UUID]:
    """Events of the endpoint's organization and kinds, created since it sends, that have
    no delivery to it yet, oldest first."""
    last_fan_out = await session.scalar(
        select(func.max(WebhookDelivery.created_at)).where(
            WebhookDelivery.endpoint_id == endpoint.id
        )
    )
    since = endpoint.sends_since
    if last_fan_out is not None:
        since = max(since, last_fan_out - LATE_COMMIT)
    query = select(Event.id).where(Event.org_id == endpoint.org_id, Event.created_at >= since)
    if endpoint.kinds:
        query = query.where(Event.kind.in_(endpoint.kinds))
    query = query.where(
        ~exists().where(
            WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.event_id == Event.id
        )
    )
    found = await session.scalars(query.order_by(Event.created_at, Event.id).limit(limit))
    return found.all()


async def insert_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    """Deliveries, each once per (endpoint, event): a second insert of one does nothing."""
    if not rows:
        return 0
    result = await session.execute(
        _insert(session)(WebhookDelivery)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


# --- sending --------------------------------------------------------------------------------


async def due_deliveries(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[tuple[WebhookDelivery, WebhookEndpoint, Event]]:
    """Pending deliveries due by `now` to enabled endpoints, the longest due first."""
    rows = await session.execute(
        select(WebhookDelivery, WebhookEndpoint, Event)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(Event, Event.id == WebhookDelivery.event_id)
        .where(
            WebhookDelivery.state == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    return [(delivery, endpoint, event) for delivery, endpoint, event in rows]


async def add_attempt(session: AsyncSession, **columns: Any) -> None:
    session.add(WebhookAttempt(**columns))
    await session.flush()


async def update_delivery(
    session: AsyncSession, delivery_id: uuid.UUID, sequence: int, **columns: Any
) -> bool:
    """Change a delivery unless a resend started another sequence meanwhile."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.sequence == sequence)
        .values(**columns)
    )
    assert isinstance(result, CursorResult)
    return bool(result.rowcount == 1)


async def delivery_exists(session: AsyncSession, delivery_id: uuid.UUID) -> bool:
    found = await session.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.id == delivery_id)
    )
    return found is not None


# --- the delivery log -----------------------------------------------------------------------


def _deliveries(endpoint_id: uuid.UUID, state: str | None) -> Select[WebhookDelivery, Event]:
    query = select(WebhookDelivery, Event).join(Event, Event.id == WebhookDelivery.event_id)
    query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if state is not None:
        query = query.where(WebhookDelivery.state == state)
    return query


async def deliveries_of(
    session: AsyncSession, endpoint_id: uuid.UUID, state: str | None, limit: int, offset: int
) -> tuple[list[tuple[WebhookDelivery, Event]], int]:
    """An endpoint's deliveries, newest first, and how many there are."""
    query = _deliveries(endpoint_id, state)
    total = await session.scalar(select(func.count()).select_from(query.subquery()))
    rows = await session.execute(
        query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [(d, e) for d, e in rows], int(total or 0)


async def attempts_of(
    session: AsyncSession, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[WebhookAttempt]]:
    by_delivery: dict[uuid.UUID, list[WebhookAttempt]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return by_delivery
    found = await session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.id)
    )
    for attempt in found:
        by_delivery[attempt.delivery_id].append(attempt)
    return by_delivery


async def get_delivery(
    session: AsyncSession, delivery_id: uuid.UUID
) -> tuple[WebhookDelivery, Event] | None:
    row = (
        await session.execute(
            select(WebhookDelivery, Event)
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id == delivery_id)
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def lock_delivery(session: AsyncSession, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    found = await session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return found.one_or_none()


# --- email ----------------------------------------------------------------------------------


async def cursor_since(session: AsyncSession, name: str, now: datetime) -> datetime:
    """Since when the consumer `name` sends events: `now` on its first run."""
    await session.execute(
        _insert(session)(NotificationCursor)
        .values(name=name, since=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    since = await session.scalar(
        select(NotificationCursor.since).where(NotificationCursor.name == name)
    )
    assert since is not None
    return since


async def unmailed_events(session: AsyncSession, since: datetime, limit: int) -> Sequence[Event]:
    """Events created since `since` without any email row yet, oldest first."""
    last = await session.scalar(select(func.max(EmailNotification.created_at)))
    if last is not None:
        since = max(since, last - LATE_COMMIT)
    found = await session.scalars(
        select(Event)
        .where(
            Event.created_at >= since,
            ~exists().where(EmailNotification.event_id == Event.id),
        )
        .order_by(Event.created_at, Event.id)
        .limit(limit)
    )
    return found.all()


async def recipients(
    session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID | None
) -> list[str]:
    """The organization's active administrators, and the member the event concerns."""
    concerned = User.role == "admin"
    if user_id is not None:
        concerned = concerned | (User.id == user_id)
    found = await session.scalars(
        select(User.email)
        .where(User.org_id == org_id, User.status == "active", concerned)
        .order_by(User.email)
    )
    return list(found.all())


async def insert_emails(session: AsyncSession, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    result = await session.execute(
        _insert(session)(EmailNotification)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["event_id", "recipient"])
    )
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


async def due_emails(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[tuple[EmailNotification, Event]]:
    rows = await session.execute(
        select(EmailNotification, Event)
        .join(Event, Event.id == EmailNotification.event_id)
        .where(EmailNotification.state == "pending", EmailNotification.next_attempt_at <= now)
        .order_by(EmailNotification.next_attempt_at, EmailNotification.id)
        .limit(limit)
    )
    return [(email, event) for email, event in rows]


async def update_email(session: AsyncSession, email_id: uuid.UUID, **columns: Any) -> None:
    await session.execute(
        update(EmailNotification)
        .where(and_(EmailNotification.id == email_id, EmailNotification.state == "pending"))
        .values(**columns)
    )
