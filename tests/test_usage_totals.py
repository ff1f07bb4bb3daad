"""Rule 3's running totals: while an organization's capacity binds, its row keeps the
period's used and reserved per kind, so metering checks rule 3 without summing its users.

Every test here ends with `verify` (the `db` fixture), which checks the totals, where kept,
against the users' sums; each test also checks them itself at the points that matter.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import (
    commit,
    error_of,
    event,
    org_api,
    release,
    reserve,
    run_sweeper,
    utc,
)
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.models import Organization
from tokenadmin.organization import repository as organization_repository

Totals = tuple[int | None, int | None, int | None, int | None]
NOT_KEPT: Totals = (None, None, None, None)


async def totals(db: Database, org_id: str) -> Totals:
    """(used_inference, reserved_inference, used_training, reserved_training) as stored."""

    async def read(session: AsyncSession) -> Totals:
        org = await session.get(Organization, uuid.UUID(org_id))
        assert org is not None
        return (
            org.used_inference,
            org.reserved_inference,
            org.used_training,
            org.reserved_training,
        )

    return await db.read(read)


async def summed(api: Api, org_id: str) -> Totals:
    """The same figures as the balance shows them, and as the users' rows sum them."""
    users = (await api.get(f"/v1/organizations/{org_id}/users", params={"limit": 500}))["users"]
    balance = await api.balance(org_id)
    figures = []
    for kind in ("inference", "training"):
        for what in ("used", "reserved"):
            assert balance[kind][what] == sum(u[kind][what] for u in users), (kind, what)
            figures.append(balance[kind][what])
    return (figures[0], figures[1], figures[2], figures[3])


@pytest.fixture
def sums(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each organization whose users are summed for rule 3 (`period_usage`), in order."""
    calls: list[str] = []
    real = organization_repository.period_usage

    async def counted(session: AsyncSession, org_id: uuid.UUID, start: Any) -> Any:
        calls.append(str(org_id))
        return await real(session, org_id, start)

    monkeypatch.setattr(organization_repository, "period_usage", counted)
    return calls


async def binding_org(api: Api, **policy: Any) -> tuple[str, Api, list[str]]:
    """300,000 inference and 100,000 training tokens bought, three users of 200,000 and
    50,000 each (overallocation on): both kinds bind. Its key of the `usage` scope, and
    the users' ids."""
    org = await funded_org(api, inference=300_000, training=100_000, overallocation=True, **policy)
    users = [(await api.user(org, max_train_tokens=50_000))["id"] for _ in range(3)]
    return org, await org_api(api, org, "usage"), users


async def test_a_binding_organization_sums_its_users_once_then_keeps_running_totals(
    api: Api, db: Database, sums: list[str]
) -> None:
    org, meter, (ana, bo, cy) = await binding_org(api)
    assert await totals(db, org) == NOT_KEPT  # kept from metering's first need on

    await meter.use(ana, 1_000, expect=200)
    assert sums == [org]
    assert await totals(db, org) == (1_000, 0, 0, 0)

    # Usage, a batch, reservations committed (above and below what they hold) and released,
    # of both kinds: each transaction adds its changes, none sums the users again.
    await meter.use(bo, 20_000, "training", expect=200)
    batch = [event(ana, 5_000), event(cy, 7_000, "training"), event(bo, 1)]
    await meter.post("/v1/usage/batch", {"events": batch}, expect=200)
    held = (await reserve(meter, cy, 50_000)).json()["id"]
    more = (await reserve(meter, bo, 10_000, "training")).json()["id"]
    dropped = (await reserve(meter, ana, 3_000)).json()["id"]
    assert await totals(db, org) == (6_001, 53_000, 27_000, 10_000)
    await commit(meter, held, 60_000)
    await commit(meter, more, 4_000)
    await release(meter, dropped)

    assert sums == [org]
    assert await totals(db, org) == (66_001, 0, 31_000, 0) == await summed(api, org)


async def test_the_running_totals_decide_where_the_organization_runs_out(
    api: Api, db: Database, sums: list[str]
) -> None:
    org, meter, (ana, bo, cy) = await binding_org(api)
    await meter.use(ana, 200_000, expect=200)
    await reserve(meter, bo, 60_000)

    details = error_of(await meter.use(cy, 40_001), 402, "insufficient_tokens")
    assert (details["limited_by"], details["remaining"]) == ("organization", 40_000)
    await meter.use(cy, 40_000, expect=200)
    error_of(await meter.use(cy, 1), 402, "insufficient_tokens")

    assert await totals(db, org) == (240_000, 60_000, 0, 0)
    assert sums == [org]
    balance = await api.get(f"/v1/users/{cy}/balance")
    assert balance["inference"]["organization_remaining"] == 0
    assert sums == [org]  # the user's balance reads the totals too


async def test_the_totals_are_not_kept_while_the_capacity_does_not_bind(
    api: Api, db: Database, sums: list[str]
) -> None:
    org = await funded_org(api, inference=1_000_000, overallocation=True)
    meter = await org_api(api, org, "usage")
    ana = (await api.user(org))["id"]
    await meter.use(ana, 10_000, expect=200)
    assert await totals(db, org) == NOT_KEPT

    # Raising an allowance past the capacity makes it bind: the next metering sums once.
    await api.patch(f"/v1/users/{ana}", {"max_tokens": 1_200_000}, expect=200)
    assert await totals(db, org) == NOT_KEPT
    await meter.use(ana, 5_000, expect=200)
    assert await totals(db, org) == (15_000, 0, 0, 0)

    # A purchase that covers the allocation again: no longer binding, no longer kept, and
    # metering meanwhile (the engine's path) does not write the organization's row.
    await api.purchase(org, 500_000)
    assert await totals(db, org) == NOT_KEPT
    await meter.use(ana, 30_000, expect=200)
    await reserve(meter, ana, 2_000)
    assert await totals(db, org) == NOT_KEPT

    # Binding again: summed again, with what was used while it didn't bind.
    await api.patch(f"/v1/users/{ana}", {"max_tokens": 1_600_000}, expect=200)
    await meter.use(ana, 1, expect=200)
    assert await totals(db, org) == (45_001, 2_000, 0, 0) == await summed(api, org)
    assert sums == [org, org]


async def test_changes_while_it_binds_keep_the_totals(
    api: Api, db: Database, clock: FakeClock, sums: list[str]
) -> None:
    org, meter, (ana, bo, cy) = await binding_org(api)
    await meter.use(ana, 50_000, expect=200)
    await reserve(meter, bo, 30_000)
    await reserve(meter, cy, 20_000, ttl_seconds=60)

    # An allowance change that leaves it binding, and a deactivation that cancels bo's
    # reservation: both under the organization's exclusive lock, both kept exact.
    await api.patch(f"/v1/users/{ana}", {"max_tokens": 250_000}, expect=200)
    await api.post(f"/v1/users/{bo}/deactivate", expect=200)
    assert await totals(db, org) == (50_000, 20_000, 0, 0)

    # The sweeper expires cy's reservation: the ORM path, its row lock, its totals.
    clock.advance(seconds=61)
    await run_sweeper(db, clock)
    assert await totals(db, org) == (50_000, 0, 0, 0) == await summed(api, org)
    assert sums == [org]


async def test_a_new_period_forgets_the_totals_and_counts_from_zero(
    api: Api, db: Database, clock: FakeClock, sums: list[str]
) -> None:
    org, meter, (ana, bo, _) = await binding_org(api)
    clock.set(utc("2026-03-31 20:00"))
    await meter.use(ana, 150_000, expect=200)
    await meter.use(bo, 30_000, "training", expect=200)
    await reserve(meter, bo, 40_000, ttl_seconds=86_400)  # open into April
    assert await totals(db, org) == (150_000, 40_000, 30_000, 0)

    clock.set(utc("2026-04-01 08:00"))
    await meter.use(bo, 2_000, expect=200)

    # April's usage only (ana's March usage is reset when ana is next written, and counts
    # nothing meanwhile); the reservation carried over.
    assert await totals(db, org) == (2_000, 40_000, 0, 0) == await summed(api, org)
    await meter.use(ana, 7_000, expect=200)
    assert await totals(db, org) == (9_000, 40_000, 0, 0) == await summed(api, org)
    assert sums == [org, org]


async def test_a_zone_change_that_moves_the_start_leaves_an_earlier_periods_usage_out(
    api: Api, db: Database, sums: list[str]
) -> None:
    """The start moves later in the month (a zone where the month began later): counters
    already labelled with that start are an earlier period's, and restart, not count."""
    org, meter, (ana, bo, _) = await binding_org(api)
    await api.patch(f"/v1/organizations/{org}", {"time_zone": "America/New_York"}, expect=200)
    await meter.use(ana, 100_000, expect=200)  # counted from 03-01 05:00 UTC
    await api.patch(f"/v1/organizations/{org}", {"period": "none"}, expect=200)
    back = {"period": "monthly", "time_zone": "UTC"}
    await api.patch(f"/v1/organizations/{org}", back, expect=200)  # from 03-01 00:00 UTC
    await meter.use(bo, 1_000, expect=200)
    assert await totals(db, org) == (1_000, 0, 0, 0)

    await api.patch(f"/v1/organizations/{org}", {"time_zone": "America/New_York"}, expect=200)

    # bo's 1,000 moves to the start of 05:00; ana's 100,000 labelled 05:00 is of the period
    # that ended when it became `none`: reset, in the journal, not counted again.
    assert await summed(api, org) == (1_000, 0, 0, 0)
    resets = await api.get(
        f"/v1/organizations/{org}/journal", params={"action": "period_reset", "user_id": ana}
    )
    assert [e["amount"] for e in resets["entries"]][-1:] == [100_000]
    await meter.use(ana, 2_000, expect=200)
    assert await totals(db, org) == (3_000, 0, 0, 0) == await summed(api, org)


async def test_operator_calls_keep_the_totals_too(api: Api, db: Database, sums: list[str]) -> None:
    """The operator's key names users of any organization: the ORM path from the start."""
    org, _, (ana, bo, _) = await binding_org(api)
    await api.use(ana, 4_000, expect=200)
    await api.post("/v1/usage/batch", {"events": [event(bo, 6_000), event(ana, 1)]}, expect=200)
    assert await totals(db, org) == (10_001, 0, 0, 0) == await summed(api, org)
    assert sums == [org]


async def _tamper(db: Database, sql: str) -> None:
    async def work(session: AsyncSession) -> None:
        await session.execute(text(sql))

    await db.write(work)


async def _differences(db: Database, change: Callable[[], Awaitable[None]]) -> list[str]:
    await change()
    report = await db.read(verify)
    return list(report.differences)


@pytest.mark.tampers
async def test_verify_names_a_running_total_that_differs_from_the_users(
    api: Api, db: Database
) -> None:
    org, meter, (ana, _, _) = await binding_org(api)
    await meter.use(ana, 1_000, expect=200)
    assert (await db.read(verify)).clean

    found = await _differences(
        db, lambda: _tamper(db, "UPDATE organizations SET reserved_training = 5")
    )
    assert found == [
        f"organization {org} (Acme) training reserved (running total) vs users:"
        " stored 5, expected 0"
    ]
    found = await _differences(
        db, lambda: _tamper(db, "UPDATE organizations SET used_training = NULL")
    )
    assert len(found) == 1
    assert "keeps some of its running totals of usage, not all" in found[0]


@pytest.mark.tampers
async def test_verify_names_totals_kept_where_the_capacity_does_not_bind(
    api: Api, db: Database
) -> None:
    org = await funded_org(api, inference=1_000_000)
    await api.user(org)
    found = await _differences(
        db,
        lambda: _tamper(
            db,
            "UPDATE organizations SET used_inference = 0, used_training = 0,"
            " reserved_inference = 0, reserved_training = 0",
        ),
    )
    assert found == [
        f"organization {org} (Acme) keeps running totals of usage while its capacity does not bind"
    ]
