"""The SQL of usage reports and forecasts: usage summed per bucket of time, read from the
journal's usage and commit entries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from tokenadmin.models import JournalEntry, Reservation, User

USAGE_ACTIONS = ("usage", "commit")
"""The journal entries that use tokens: usage recorded at once, and committed reservations."""


def _bucket_of(
    moment: InstrumentedAttribute[datetime], edges: Sequence[datetime]
) -> ColumnElement[int]:
    """The index i of the bucket [edges[i], edges[i + 1]) that holds `moment` (the last
    bucket has no end), as a binary search written in nested CASEs: a few comparisons a row
    whatever the number of buckets, and the same SQL on SQLite and PostgreSQL, which keeps
    time zones to itself (the edges are the organization's local midnights, made here)."""

    def within(low: int, high: int) -> ColumnElement[int]:
        if high - low == 1:
            return literal_column(str(low))
        middle = (low + high) // 2
        return case((moment < edges[middle], within(low, middle)), else_=within(middle, high))

    return within(0, len(edges))


def _usage_entries(
    org_id: uuid.UUID, user_id: uuid.UUID | None, since: datetime, until: datetime | None
) -> list[ColumnElement[bool]]:
    conditions = [
        JournalEntry.org_id == org_id,
        JournalEntry.action.in_(USAGE_ACTIONS),
        JournalEntry.created_at >= since,
    ]
    if until is not None:
        conditions.append(JournalEntry.created_at < until)
    if user_id is not None:
        conditions.append(JournalEntry.user_id == user_id)
    return conditions


async def usage_per_bucket(
    session: AsyncSession,
    org_id: uuid.UUID,
    edges: Sequence[datetime],
    *,
    until: datetime | None,
    user_id: uuid.UUID | None = None,
    by_model: bool = False,
    limit: int | None = None,
) -> list[tuple[int, str, str | None, int]]:
    """(bucket index, kind, model, tokens) of an organization's (or one user's) usage from
    `edges[0]` to `until` (no end: None), summed per bucket, kind and, with `by_model`, the
    model the caller named (a commit's is its reservation's). At most `limit` rows."""
    bucket = _bucket_of(JournalEntry.created_at, edges).label("bucket")
    columns: list[ColumnElement[Any]] = [
        bucket,
        JournalEntry.kind.label("kind"),
        JournalEntry.used_delta.label("used"),
    ]
    entries: Select[Any]
    if by_model:
        model = func.coalesce(
            JournalEntry.details["model"].as_string(), Reservation.details["model"].as_string()
        )
        columns.append(model.label("model"))
        entries = select(*columns).outerjoin(
            Reservation, Reservation.id == JournalEntry.reservation_id
        )
    else:
        entries = select(*columns)
    inner = entries.where(*_usage_entries(org_id, user_id, edges[0], until)).subquery()
    model_column = inner.c.model if by_model else literal_column("NULL")
    grouped = (
        select(inner.c.bucket, inner.c.kind, model_column, func.sum(inner.c.used))
        .group_by(inner.c.bucket, inner.c.kind, *((inner.c.model,) if by_model else ()))
        .order_by(inner.c.bucket, *((inner.c.model,) if by_model else ()), inner.c.kind)
    )
    if limit is not None:
        grouped = grouped.limit(limit)
    return [
        (int(index), str(kind), None if model is None else str(model), int(used))
        for index, kind, model, used in (await session.execute(grouped)).all()
        if kind is not None
    ]


async def usage_per_user(
    session: AsyncSession, org_id: uuid.UUID, since: datetime
) -> list[tuple[User, str, int]]:
    """Each active user of an organization who used tokens since `since`, with what they
    used of each kind (one row a user and kind)."""
    sums = (
        select(
            JournalEntry.user_id.label("user_id"),
            JournalEntry.kind.label("kind"),
            func.sum(JournalEntry.used_delta).label("used"),
        )
        .where(*_usage_entries(org_id, None, since, None), JournalEntry.user_id.is_not(None))
        .group_by(JournalEntry.user_id, JournalEntry.kind)
        .subquery()
    )
    statement = (
        select(User, sums.c.kind, sums.c.used)
        .join(sums, sums.c.user_id == User.id)
        .where(User.org_id == org_id, User.status == "active")
    )
    return [
        (user, str(kind), int(used))
        for user, kind, used in (await session.execute(statement)).all()
        if kind is not None
    ]
