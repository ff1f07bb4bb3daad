from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tokenadmin.jobs.service import JobState


class JobOut(BaseModel):
    name: str = Field(examples=["reservations.expire"])
    interval_seconds: float | None = Field(
        description="Seconds between runs; null for a job this server does not run."
    )
    state: Literal["running", "due", "waiting", "abandoned"] = Field(
        description="running: a process holds it; due: waiting for a process to take it; "
        "waiting: not due yet; abandoned: its holder stopped renewing the lease (it died), "
        "another process takes it over."
    )
    lag_seconds: float = Field(description="How long it has been overdue; 0 when it is not.")
    next_due_at: datetime
    holder: str | None = Field(description="The process that runs it or ran it last.")
    lease_until: datetime | None
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_ok: bool | None
    last_error: str | None
    runs: int = Field(description="Runs started, in all processes.")

    @classmethod
    def of(cls, state: JobState) -> JobOut:
        return cls.model_validate(asdict(state))
