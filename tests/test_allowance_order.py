"""The user table's sorts by allowance read `allowance_order`, which triggers keep equal to
`users` whatever writes them (migration 0016); and so no index of `users` holds an
allowance, and an allowance change updates users in place on PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import START
from tests.helpers import bought_org
from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.allowance.schemas import AllowanceRow
from tokenadmin.bulk import seed_users, seeded_email
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.models import AllowanceOrder, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.user import repository
from tokenadmin.user import service as user_service

SEEDED = 120


async def _organization(db: Database, act: Act, name: str = "Order") -> uuid.UUID:
    async def work(session: AsyncSession) -> uuid.UUID:
        org = await bought_org(
            session, act, name, inference=10_000_000_000, training=10_000_000_000
        )
        return org.id

    return await db.write(work)


async def _pairs(db: Database) -> tuple[list[Any], list[Any]]:
    """Every user's (id, organization, allowances), as `users` and as `allowance_order`."""

    async def work(session: AsyncSession) -> tuple[list[Any], list[Any]]:
        users = await session.execute(
            select(User.id, User.org_id, User.max_tokens, User.max_train_tokens).order_by(User.id)
        )
        order = await session.execute(
            select(
                AllowanceOrder.user_id,
                AllowanceOrder.org_id,
                AllowanceOrder.max_tokens,
                AllowanceOrder.max_train_tokens,
            ).order_by(AllowanceOrder.user_id)
        )
        return [tuple(row) for row in users], [tuple(row) for row in order]

    return await db.read(work)


async def _sorted(db: Database, org_id: uuid.UUID, sort: str, descending: bool) -> list[Any]:
    async def work(session: AsyncSession) -> list[Any]:
        org = await organization_service.get(session, org_id)
        query = repository.UserQuery(
            org_id=org_id,
            period_start=current_period(org, START),
            sort=sort,
            descending=descending,
            limit=25,
        )
        found: list[Any] = []
        while True:
            users, total = await repository.search(session, query)
            found += [(getattr(user, sort), user.id) for user in users]
            query.offset += query.limit
            if query.offset >= total:
                return found

    return await db.read(work)


async def test_the_allowance_order_follows_every_write_of_a_users_allowances(
    db: Database, clock: FakeClock
) -> None:
    act = Act("test", clock.now())
    org_id = await _organization(db, act)
    other = await _organization(db, act, "Other")
    await seed_users(db, org_id, SEEDED, max_tokens=500_000, max_train_tokens=7_000, act=act)
    await seed_users(db, other, 10, max_tokens=900_000, act=act)

    async def create_and_change(session: AsyncSession) -> None:
        org = await organization_service.lock_for_change(session, act, org_id)
        await user_service.create(
            session, act, org, user_service.NewUser("new@example.com", "New", max_tokens=432_100)
        )
        rows = [
            AllowanceRow(
                user=seeded_email("user", index),
                max_tokens=500_000 + (index * 7919) % 1_000 * 10,
                max_train_tokens=7_000 + (index * 104_729) % 500 if index % 3 else None,
            )
            for index in range(0, SEEDED, 2)
        ]
        await allowance_service.change(session, act, org, rows)

    await db.write(create_and_change)

    async def deactivate(session: AsyncSession) -> None:
        org = await organization_service.lock_for_change(session, act, org_id)
        user = await user_service.find_by_ref(session, org_id, seeded_email("user", 4))
        await user_service.deactivate(session, act, org, user)

    await db.write(deactivate)
    stored, order = await _pairs(db)
    assert len(stored) == SEEDED + 10 + 1
    assert order == stored
    assert any(row[2] == 0 for row in stored)  # the deactivated user's, returned

    for sort in ("max_tokens", "max_train_tokens"):
        for descending in (False, True):
            column = 2 if sort == "max_tokens" else 3
            expected = sorted(
                ((row[column], row[0]) for row in stored if row[1] == org_id),
                reverse=descending,
            )
            assert await _sorted(db, org_id, sort, descending) == expected


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_allowance_change_of_whole_pages_of_users_updates_every_one_in_place(
    db: Database, clock: FakeClock
) -> None:
    """Users created together fill pages together, and an administrator changes them
    together: every row of a page gets a new version at once. With no index holding an
    allowance and half of each page free, PostgreSQL writes each in place (a heap-only
    update), without an entry in any of the table's indexes."""
    act = Act("test", clock.now())
    org_id = await _organization(db, act)
    await seed_users(db, org_id, SEEDED, max_tokens=500_000, act=act)

    async def change(session: AsyncSession) -> tuple[int, int]:
        rows = [
            AllowanceRow(user=seeded_email("user", index), max_tokens=600_000, max_train_tokens=0)
            for index in range(SEEDED)
        ]
        await allowance_service.change(session, act, org_id, rows)
        await session.flush()
        counts = await session.execute(
            text(
                "SELECT pg_stat_get_xact_tuples_updated('users'::regclass),"
                " pg_stat_get_xact_tuples_hot_updated('users'::regclass)"
            )
        )
        updated, in_place = counts.one()
        return int(updated), int(in_place)

    updated, in_place = await db.write(change)
    assert updated >= SEEDED
    assert in_place == updated


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_metering_moves_last_activity_and_the_counters_in_place(
    db: Database, clock: FakeClock
) -> None:
    """Metering writes a user's counters, and at most once a minute their last activity
    (the first use in a minute moves it): with no index holding either (migration 0017),
    PostgreSQL writes every such update in place, as the allowance change's."""
    act = Act("test", clock.now())
    org_id = await _organization(db, act)
    await seed_users(db, org_id, SEEDED, max_tokens=500_000, act=act)

    async def meter(session: AsyncSession) -> tuple[int, int]:
        # The columns the metering engine's UPDATE writes (usage.engine), for every user.
        await session.execute(
            text(
                "UPDATE users SET inference_used = inference_used + 1,"
                " journal_head = md5(id::text), last_activity_at = :now"
                " WHERE org_id = :org"
            ),
            {"now": clock.now(), "org": org_id},
        )
        counts = await session.execute(
            text(
                "SELECT pg_stat_get_xact_tuples_updated('users'::regclass),"
                " pg_stat_get_xact_tuples_hot_updated('users'::regclass)"
            )
        )
        updated, in_place = counts.one()
        await session.rollback()  # counters moved without their journal entries: undone
        return int(updated), int(in_place)

    updated, in_place = await db.write(meter)
    assert updated == SEEDED
    assert in_place == updated
