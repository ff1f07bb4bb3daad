"""The platform operator's view of the background jobs: when each ran, how it went, how
late it is and which process holds it (the same states as GET /v1/jobs)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from tokenadmin.dashboard.web import ViewerDep, render
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound
from tokenadmin.jobs import service
from tokenadmin.jobs.scheduler import Scheduler

router = APIRouter(include_in_schema=False)

STATE_WORDS = {
    "running": "Running",
    "due": "Due",
    "waiting": "Waiting",
    "abandoned": "Held by a stopped process",
}


def seconds_words(seconds: float) -> str:
    """A duration as a person reads it: 45 s, 5 min, 3 h 20 min, 2 d 4 h."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, _ = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


@router.get("/operator/jobs")
async def jobs_page(request: Request, viewer: ViewerDep) -> HTMLResponse:
    if not viewer.is_operator:
        raise NotFound("Page not found.")
    scheduler: Scheduler = request.app.state.jobs
    intervals = {name: job.interval for name, job in scheduler.jobs.items()}
    now = clock_of(request).now()
    found = await db_of(request).read(lambda s: service.states(s, now, intervals))
    names = {state.name for state in found}
    not_run = sorted(set(intervals) - names)  # registered here, never run by any process yet
    return render(
        request,
        "jobs.html",
        viewer,
        jobs=found,
        not_run=not_run,
        intervals=intervals,
        now=now,
        state_words=STATE_WORDS,
        seconds_words=seconds_words,
    )
