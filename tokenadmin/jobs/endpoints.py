from __future__ import annotations

from fastapi import APIRouter, Request

from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import ClockDep, DatabaseDep, PrincipalDep
from tokenadmin.jobs import service
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.jobs.schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=AUDITED)


@router.get("", response_model=list[JobOut])
async def list_jobs(
    request: Request, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> list[JobOut]:
    """The background jobs: last run, lag, holder and last error (platform operators)."""
    principal.require_operator()
    scheduler: Scheduler = request.app.state.jobs
    intervals = {name: job.interval for name, job in scheduler.jobs.items()}
    found = await db.read(lambda s: service.states(s, clock.now(), intervals))
    return [JobOut.of(state) for state in found]
