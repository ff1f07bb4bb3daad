"""Background jobs that run once across server processes.

Every server process runs a Scheduler with the same jobs. A job's row in `job_leases`
says when it is due and who holds it; a process runs a due job only after claiming it
(repository.claim: one conditional UPDATE, so of several processes exactly one wins),
renews the lease while the job runs, and releases it with the next due time. A process
that dies stops renewing: when its lease ends another process claims the job and runs it
again. After downtime a job that was due long ago runs once, and does everything overdue
since (each job processes what is due at its `now`, not one interval's worth)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.clock import Clock
from tokenadmin.database import Database
from tokenadmin.errors import Unavailable
from tokenadmin.jobs import repository

log = logging.getLogger("tokenadmin.jobs")

STOPPED = "stopped: the server shut down while it ran"

JobFunc = Callable[[Database, Clock], Awaitable[object]]


def process_name() -> str:
    """host:pid:random, unique per process start (a pid is reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Job:
    name: str
    interval: timedelta
    func: JobFunc


class Scheduler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        lease: timedelta = timedelta(seconds=30),
        holder: str | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.lease = lease
        self.holder = holder or process_name()
        self.jobs: dict[str, Job] = {}

    def register(self, name: str, interval: float | timedelta, func: JobFunc) -> None:
        """Run `func(db, clock)` every `interval` (seconds), once across all processes."""
        if name in self.jobs:
            raise ValueError(f"job {name!r} is registered twice")
        every = interval if isinstance(interval, timedelta) else timedelta(seconds=interval)
        if every <= timedelta(0):
            raise ValueError(f"job {name!r} needs an interval above 0")
        self.jobs[name] = Job(name, every, func)

    async def attempt(self, name: str) -> bool:
        """Claim the job if it is due and free, run it, release it. True when it ran here."""
        job = self.jobs[name]

        async def claim(session: AsyncSession) -> bool:
            now = self.clock.now()
            await repository.ensure(session, name, now)  # a job without a row is due now
            return await repository.claim(session, name, self.holder, now, self.lease)

        if not await self.db.write(claim):
            return False
        try:
            error = await self._run_renewing(job)
        except asyncio.CancelledError:
            # The server stops: hand the job back, due at once, instead of leaving it
            # to the end of the lease.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(job, STOPPED, due_now=True), 2)
            raise
        await self._release(job, error)
        return True

    async def _release(self, job: Job, error: str | None, *, due_now: bool = False) -> None:
        now = self.clock.now()
        due = now if due_now else now + job.interval
        released = await self.db.write(
            lambda s: repository.release(s, job.name, self.holder, now, due, error)
        )
        if not released:
            log.warning("job %s was taken over by another process before it ended here", job.name)

    async def run_due(self) -> list[str]:
        """Attempt every job once; the names of those that ran in this process."""
        names = list(self.jobs)
        ran = await asyncio.gather(*(self.attempt(name) for name in names))
        return [name for name, did in zip(names, ran, strict=True) if did]

    async def run_forever(self) -> None:
        """One loop per job, each polling at most every third of a lease, so a job whose
        holder died is taken over soon after its lease ends."""
        async with asyncio.TaskGroup() as group:
            for name in self.jobs:
                group.create_task(self._loop(name))

    async def _loop(self, name: str) -> None:
        poll = min(self.jobs[name].interval, self.lease / 3).total_seconds()
        while True:
            try:
                await self.attempt(name)
            except asyncio.CancelledError:
                raise
            except Unavailable:
                log.warning("the database can't be reached; job %s waits %.0f s", name, poll)
            except Exception:
                log.exception("job %s could not be scheduled; trying again in %.0f s", name, poll)
            await asyncio.sleep(poll)

    async def _run_renewing(self, job: Job) -> str | None:
        """Run the job while renewing its lease; its error as text, or None."""
        work = asyncio.ensure_future(job.func(self.db, self.clock))
        heartbeat = asyncio.create_task(self._renew_while(job.name, work))
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            work.cancel()  # the server stops; its transaction rolls back before the release
            with contextlib.suppress(BaseException):
                await asyncio.wait({work}, timeout=2)
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if work.cancelled():
            return "stopped here: another process took the job over"
        error = work.exception()
        if error is None:
            return None
        log.error("job %s failed", job.name, exc_info=error)
        return f"{type(error).__name__}: {error}"

    async def _renew_while(self, name: str, work: asyncio.Future[object]) -> None:
        every = self.lease.total_seconds() / 3
        while not work.done():
            await asyncio.sleep(every)
            try:
                kept = await self.db.write(
                    lambda s: repository.renew(s, name, self.holder, self.clock.now(), self.lease)
                )
            except Exception:
                log.warning("could not renew the lease of job %s", name, exc_info=True)
                continue
            if not kept:
                log.warning("job %s lost its lease; stopping it here", name)
                work.cancel()
                return
