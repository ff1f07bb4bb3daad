"""`tokenadmin jobs`: how the background jobs of the servers stand (as GET /v1/jobs)."""

from __future__ import annotations

from datetime import datetime

import typer

from tokenadmin import sweeper
from tokenadmin.cli.common import Cli, Json, out, say, table
from tokenadmin.clock import SystemClock
from tokenadmin.database import Database
from tokenadmin.jobs import service
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.jobs.schemas import JobOut


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def jobs(ctx: typer.Context, json_output: Json = False) -> None:
    """List the background jobs: state, lag, last run, holder and last error."""
    cli = Cli.of(ctx, json_output)
    settings = cli.settings()
    clock = SystemClock()

    async def work(db: Database) -> list[JobOut]:
        scheduler = Scheduler(db, clock)
        sweeper.register(scheduler, settings)  # the jobs a server of these settings runs
        intervals = {name: job.interval for name, job in scheduler.jobs.items()}
        found = await db.read(lambda s: service.states(s, clock.now(), intervals))
        return [JobOut.of(state) for state in found]

    listed = cli.run(work)
    if cli.emit_if_json(listed):
        return
    rows = [
        (
            job.name,
            job.state,
            f"{job.lag_seconds:.0f} s" if job.lag_seconds else "",
            job.runs,
            _when(job.last_finished_at or job.last_started_at),
            {True: "ok", False: "failed", None: ""}[job.last_ok],
            job.holder or "",
            job.last_error or "",
        )
        for job in listed
    ]
    columns = ("job", "state", "late by", "runs", "last run", "outcome", "holder", "last error")
    out().print(table("Background jobs", columns, rows))
    if not listed:
        say("No server has run a job on this database yet.")
