"""Background upkeep that time alone makes due: expired reservations, expired purchases,
new periods, old idempotency keys, ended sign-ins and ended access tokens. Each step is a
job of the scheduler (tokenadmin.jobs), run once across all server processes; each is also
idempotent (a locked change), and does everything overdue at its `now`, so a run after
downtime catches up at once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from tokenadmin.act import Act
from tokenadmin.asksage import access_token
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.idempotency import service as idempotency
from tokenadmin.jobs.scheduler import JobFunc, Scheduler
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization.service import lock_for_change, maintenance_due
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.endpoints import answer_of
from tokenadmin.usage.service import Caller, Operation, run

SYSTEM = Caller(actor="system", org_id=None, idempotency_scope="system")


@dataclass
class SweepReport:
    organizations_updated: int = 0
    reservations_expired: int = 0
    idempotency_keys_purged: int = 0
    sessions_ended: int = 0
    access_tokens_ended: int = 0


async def maintain_organizations(db: Database, clock: Clock) -> int:
    """Record expired purchases and start new periods, in each organization that has one
    due (every period boundary passed since, at once)."""
    updated = 0
    now = clock.now()
    act = Act("system", now)
    for org in await db.read(organization_repository.list_all):
        if maintenance_due(org, now):
            await db.write(partial(lock_for_change, act=act, org_id=org.id))
            updated += 1
    return updated


async def expire_reservations(db: Database, clock: Clock, *, idempotency_ttl: timedelta) -> int:
    """Release every reservation whose time to live has run out, 500 at a time."""
    expired = 0
    while True:
        overdue = await db.read(
            lambda session: usage_repository.expired_reservations(session, clock.now(), 500)
        )
        if not overdue:
            break
        by_org = defaultdict(list)
        for reservation_id, org_id in overdue:
            by_org[org_id].append(Operation("expire", reservation_id=reservation_id))
        for operations in by_org.values():
            answers = await run(
                db,
                clock,
                SYSTEM,
                operations,
                answer=answer_of,
                default_ttl=1,
                idempotency_ttl=idempotency_ttl,
            )
            expired += sum(1 for a in answers if a.status_code == 200)
        if len(overdue) < 500:
            break
    return expired


async def purge_idempotency_keys(db: Database, clock: Clock) -> int:
    """Every expired key, a bounded chunk a transaction (`idempotency.purge`)."""
    now = clock.now()
    purged = 0
    while True:
        chunk = await db.write(lambda session: idempotency.purge(session, now))
        purged += chunk
        if chunk < idempotency.PURGE_CHUNK:
            return purged


async def end_sessions(db: Database, clock: Clock) -> int:
    return await db.write(lambda session: auth_service.forget_expired(session, clock.now()))


async def end_access_tokens(db: Database, clock: Clock) -> int:
    return await db.write(lambda session: access_token.forget_expired(session, clock.now()))


async def sweep(db: Database, clock: Clock, *, idempotency_ttl: timedelta) -> SweepReport:
    """Every step once, in this process (tests and scripts; servers run them as jobs)."""
    report = SweepReport()
    report.organizations_updated = await maintain_organizations(db, clock)
    report.reservations_expired = await expire_reservations(
        db, clock, idempotency_ttl=idempotency_ttl
    )
    report.idempotency_keys_purged = await purge_idempotency_keys(db, clock)
    report.sessions_ended = await end_sessions(db, clock)
    report.access_tokens_ended = await end_access_tokens(db, clock)
    return report


def register(scheduler: Scheduler, settings: Settings) -> None:
    """The upkeep jobs, each every `sweep_interval_seconds` unless `job_intervals` names it."""
    ttl = timedelta(hours=settings.idempotency_ttl_hours)
    steps: dict[str, JobFunc] = {
        "organizations.maintenance": maintain_organizations,
        "reservations.expire": partial(expire_reservations, idempotency_ttl=ttl),
        "idempotency.purge": purge_idempotency_keys,
        "sessions.end": end_sessions,
        "access_tokens.end": end_access_tokens,
    }
    for name, step in steps.items():
        interval = settings.job_intervals.get(name, settings.sweep_interval_seconds)
        scheduler.register(name, interval, step)
