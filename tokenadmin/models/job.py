from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tokenadmin.models.base import Base, UTCDateTime


class JobLease(Base):
    """One background job's schedule and lease. A process runs a job only after claiming
    its row (one conditional UPDATE: due and not leased), renews the lease while it runs,
    and releases it with the next due time; a process that dies leaves a lease that ends by
    itself, so another takes the job over (tokenadmin.jobs)."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    runs: Mapped[int] = mapped_column(Integer, default=0)
