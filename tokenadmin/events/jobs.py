"""The job `events.evaluate`: the events that time or a change elsewhere makes due, checked
in every organization (a kind's balance low, over-allocation, purchases expiring within 30
days, thresholds passed without a crossing by usage). Each organization in a transaction of
its own; each event is once per crossing (events/service.py), so a run that overlaps
another, or repeats one after downtime, adds nothing twice."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.events import service
from tokenadmin.jobs.scheduler import Scheduler
from tokenadmin.organization import repository as organization_repository

JOB = "events.evaluate"


@dataclass
class Evaluation:
    organizations: int = 0
    events: int = 0


async def evaluate_organization(session: AsyncSession, act: Act, org_id: uuid.UUID) -> int:
    """The due events of one organization; how many this call recorded."""
    org = await organization_repository.get(session, org_id, fresh=True)
    if org is None:
        return 0
    fired = await service.balance_alerts(session, act, org)
    fired += await service.purchases_expiring(session, act, org)
    fired += await service.sweep_thresholds(session, act, org)
    return fired


async def evaluate(db: Database, clock: Clock) -> Evaluation:
    """Every organization's due events, at the clock's `now`."""
    report = Evaluation()
    act = Act("system", clock.now())
    org_ids = [org.id for org in await db.read(organization_repository.list_all)]
    for org_id in org_ids:
        report.events += await db.write(partial(evaluate_organization, act=act, org_id=org_id))
        report.organizations += 1
    return report


def register(scheduler: Scheduler, settings: Settings) -> None:
    """`events.evaluate`, every `sweep_interval_seconds` unless `job_intervals` names it."""
    interval = settings.job_intervals.get(JOB, settings.sweep_interval_seconds)
    scheduler.register(JOB, interval, evaluate)
