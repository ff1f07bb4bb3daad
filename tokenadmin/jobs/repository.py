"""The SQL of job leases: each change is one statement, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import JobLease

ERROR_CHARS = 2000  # last_error keeps the start of a long message, enough to act on


async def ensure(session: AsyncSession, name: str, now: datetime) -> None:
    """The job's row, due at once when new (a job never run is overdue)."""
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    await session.execute(
        insert(JobLease)
        .values(name=name, next_due_at=now, runs=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )


async def claim(
    session: AsyncSession, name: str, holder: str, now: datetime, lease: timedelta
) -> bool:
    """Take the job when it is due and nobody holds a live lease on it. Of processes that
    race, exactly one UPDATE matches the row; the others match nothing."""
    result = await session.execute(
        update(JobLease)
        .where(
            JobLease.name == name,
            (JobLease.lease_until.is_(None)) | (JobLease.lease_until < now),
            JobLease.next_due_at <= now,
        )
        .values(
            holder=holder,
            lease_until=now + lease,
            last_started_at=now,
            runs=JobLease.runs + 1,
        )
        .execution_options(synchronize_session=False)
    )
    return _matched(result) == 1


async def renew(
    session: AsyncSession, name: str, holder: str, now: datetime, lease: timedelta
) -> bool:
    """Extend the lease of a running job; False when another process took it over."""
    result = await session.execute(
        update(JobLease)
        .where(JobLease.name == name, JobLease.holder == holder, JobLease.lease_until.is_not(None))
        .values(lease_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    return _matched(result) == 1


async def release(
    session: AsyncSession,
    name: str,
    holder: str,
    now: datetime,
    next_due_at: datetime,
    error: str | None,
) -> bool:
    """End the run: its outcome, the lease freed, the next due time. The holder stays as
    the process that ran it last. False when another process had taken the job over."""
    result = await session.execute(
        update(JobLease)
        .where(JobLease.name == name, JobLease.holder == holder, JobLease.lease_until.is_not(None))
        .values(
            lease_until=None,
            last_finished_at=now,
            last_ok=error is None,
            last_error=None if error is None else error[:ERROR_CHARS],
            next_due_at=next_due_at,
        )
        .execution_options(synchronize_session=False)
    )
    return _matched(result) == 1


async def list_all(session: AsyncSession) -> Sequence[JobLease]:
    return (await session.scalars(select(JobLease).order_by(JobLease.name))).all()


def _matched(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
