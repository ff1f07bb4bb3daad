"""How the background jobs stand, for operators (GET /v1/jobs, `tokenadmin jobs`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.jobs import repository


@dataclass(frozen=True)
class JobState:
    name: str
    interval_seconds: float | None  # None: a job this process does not run
    state: str  # running, due, waiting, or held by a process that stopped renewing
    lag_seconds: float  # how long it has been overdue; 0 when it is not
    next_due_at: datetime
    holder: str | None
    lease_until: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_ok: bool | None
    last_error: str | None
    runs: int


async def states(
    session: AsyncSession, now: datetime, intervals: dict[str, timedelta]
) -> list[JobState]:
    """Every job with a row, by name: each job's row is made when a server first runs it."""
    found = []
    for row in await repository.list_all(session):
        if row.lease_until is not None and row.lease_until >= now:
            state = "running"
        elif row.lease_until is not None:
            state = "abandoned"  # its holder stopped renewing: another process takes it over
        else:
            state = "due" if row.next_due_at <= now else "waiting"
        interval = intervals.get(row.name)
        found.append(
            JobState(
                name=row.name,
                interval_seconds=None if interval is None else interval.total_seconds(),
                state=state,
                lag_seconds=max(0.0, (now - row.next_due_at).total_seconds()),
                next_due_at=row.next_due_at,
                holder=row.holder,
                lease_until=row.lease_until,
                last_started_at=row.last_started_at,
                last_finished_at=row.last_finished_at,
                last_ok=row.last_ok,
                last_error=row.last_error,
                runs=row.runs,
            )
        )
    return found
