"""Background upkeep that time alone makes due: expired reservations, expired purchases,
new periods, old idempotency keys, ended sign-ins and ended access tokens. Every server
process runs it; running it twice is harmless (each step is a locked, idempotent change)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

from tokenadmin.act import Act
from tokenadmin.asksage import access_token
from tokenadmin.auth import service as auth_service
from tokenadmin.clock import Clock
from tokenadmin.database import Database
from tokenadmin.errors import Unavailable
from tokenadmin.idempotency import service as idempotency
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization.service import lock_for_change, maintenance_due
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.endpoints import answer_of
from tokenadmin.usage.service import Caller, Operation, run

log = logging.getLogger("tokenadmin.sweeper")
SYSTEM = Caller(actor="system", org_id=None, idempotency_scope="system")


@dataclass
class SweepReport:
    organizations_updated: int = 0
    reservations_expired: int = 0
    idempotency_keys_purged: int = 0
    sessions_ended: int = 0
    access_tokens_ended: int = 0


async def sweep(db: Database, clock: Clock, *, idempotency_ttl: timedelta) -> SweepReport:
    report = SweepReport()
    now = clock.now()
    act = Act("system", now)
    organizations = await db.read(organization_repository.list_all)
    for org in organizations:
        if maintenance_due(org, now):
            await db.write(partial(lock_for_change, act=act, org_id=org.id))
            report.organizations_updated += 1
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
            report.reservations_expired += sum(1 for a in answers if a.status_code == 200)
        if len(overdue) < 500:
            break
    report.idempotency_keys_purged = await db.write(
        lambda session: idempotency.purge(session, clock.now())
    )
    report.sessions_ended = await db.write(
        lambda session: auth_service.forget_expired(session, clock.now())
    )
    report.access_tokens_ended = await db.write(
        lambda session: access_token.forget_expired(session, clock.now())
    )
    return report


async def run_forever(
    db: Database, clock: Clock, *, interval: float, idempotency_ttl: timedelta
) -> None:
    while True:
        try:
            await sweep(db, clock, idempotency_ttl=idempotency_ttl)
        except asyncio.CancelledError:
            raise
        except Unavailable:
            log.warning("the database can't be reached; sweeping again in %.0f s", interval)
        except Exception:
            log.exception("sweep failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)
