"""Seeding many users at once keeps the ledger exact (the `db` fixture verifies after each)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import bought_org
from tokenadmin.act import Act
from tokenadmin.bulk import seed_users
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest, RuleRefused
from tokenadmin.models import JournalEntry, Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.user import service as user_service

COUNT = 500


async def _org(
    db: Database, clock: FakeClock, *, inference: int, training: int = 0, **policy: object
) -> uuid.UUID:
    act = Act("test", clock.now())

    async def work(session: AsyncSession) -> uuid.UUID:
        org = await bought_org(
            session, act, "Bulk", inference=inference, training=training, **policy
        )
        return org.id

    return await db.write(work)


async def _state(db: Database, org_id: uuid.UUID) -> tuple[Organization, int, list[str]]:
    async def work(session: AsyncSession) -> tuple[Organization, int, list[str]]:
        org = await organization_service.get(session, org_id)
        entries = await session.scalar(
            select(func.count())
            .select_from(JournalEntry)
            .where(JournalEntry.action == "user_created")
        )
        emails = list(
            await session.scalars(
                select(User.email).where(User.org_id == org_id).order_by(User.email)
            )
        )
        return org, int(entries or 0), emails

    return await db.read(work)


async def test_seeded_users_take_their_allowances_from_the_balance_with_an_entry_each(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=200_000_000, training=1_000_000)
    await seed_users(db, org_id, COUNT, max_train_tokens=1_000, act=Act("test", clock.now()))
    org, entries, emails = await _state(db, org_id)
    assert org.allocated_inference == COUNT * 200_000
    assert org.allocated_training == COUNT * 1_000
    assert entries == 2 * COUNT
    assert emails[0] == "user000000@bulk.example"
    assert emails[-1] == f"user{COUNT - 1:06d}@bulk.example"


async def _create_one(
    db: Database, org_id: uuid.UUID, act: Act, email: str, max_tokens: int
) -> None:
    async def work(session: AsyncSession) -> None:
        org = await organization_service.lock_for_change(session, act, org_id)
        spec = user_service.NewUser(email=email, name=email, max_tokens=max_tokens)
        await user_service.create(session, act, org, spec)

    await db.write(work)


async def test_the_running_allocated_total_continues_between_users_created_one_by_one(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=10_000_000)
    act = Act("test", clock.now())
    await _create_one(db, org_id, act, "ana@example.com", 300_000)
    await seed_users(db, org_id, 10, act=act)
    await _create_one(db, org_id, act, "ben@example.com", 250_000)

    async def afters(session: AsyncSession) -> list[tuple[int | None, int | None, int]]:
        statement = (
            select(JournalEntry.allocated_after, JournalEntry.allowance_after, JournalEntry.amount)
            .where(JournalEntry.action == "user_created", JournalEntry.kind == "inference")
            .order_by(JournalEntry.id)
        )
        return [tuple(row) for row in await session.execute(statement)]  # type: ignore[misc]

    running = await db.read(afters)
    seeded = [(300_000 + 200_000 * n, 200_000, 200_000) for n in range(1, 11)]
    assert running == [(300_000, 300_000, 300_000), *seeded, (2_550_000, 250_000, 250_000)]


async def test_seeding_again_numbers_on_after_the_existing_users(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=100_000_000)
    await seed_users(db, org_id, 3)
    await seed_users(db, org_id, 2)
    await seed_users(db, org_id, 2, prefix="load-b")
    _, _, emails = await _state(db, org_id)
    assert emails == [
        "load-b000000@bulk.example",
        "load-b000001@bulk.example",
        *(f"user{n:06d}@bulk.example" for n in range(5)),
    ]


async def test_seeding_more_than_the_balance_is_refused_and_writes_nothing(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=1_000_000)
    with pytest.raises(RuleRefused) as refused:
        await seed_users(db, org_id, 6)
    assert refused.value.code == "exceeds_balance"
    assert refused.value.details["shortfall"] == 200_000
    org, entries, emails = await _state(db, org_id)
    assert (org.allocated_inference, entries, emails) == (0, 0, [])
    await seed_users(db, org_id, 5)  # exactly the capacity fits


async def test_an_overallocating_organization_may_seed_beyond_its_capacity(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=1_000_000, overallocation=True)
    await seed_users(db, org_id, 10)
    org, _, _ = await _state(db, org_id)
    assert org.allocated_inference == 2_000_000


async def test_seeding_below_the_minimum_or_with_a_bad_prefix_is_refused(
    db: Database, clock: FakeClock
) -> None:
    org_id = await _org(db, clock, inference=100_000_000)
    with pytest.raises(RuleRefused) as refused:
        await seed_users(db, org_id, 5, max_tokens=1_000)
    assert refused.value.code == "below_minimum"
    for prefix in ("", "User", "a_b", "a%"):
        with pytest.raises(InvalidRequest):
            await seed_users(db, org_id, 5, prefix=prefix)
    with pytest.raises(InvalidRequest):
        await seed_users(db, org_id, 0)
