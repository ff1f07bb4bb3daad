"""The idempotency lookup probes the keys' index, and the purge reads the expiry index in
order, whatever the planner's statistics say."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import START
from tokenadmin import sweeper
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.idempotency import service as idempotency
from tokenadmin.idempotency.service import Answer


def _rows(
    scope: str, count: int, ttl: timedelta = timedelta(days=1), prefix: str = "key"
) -> list[dict[str, object]]:
    answer = Answer(200, {"n": 1})
    return [
        idempotency.remembered(scope, f"{prefix}-{n}", f"print-{n}", answer, START, ttl)
        for n in range(count)
    ]


def _expiring(minutes: int) -> dict[str, object]:
    """A key stored at START that expires `minutes` after it."""
    ttl = timedelta(minutes=minutes)
    return _rows("org:a", 1, ttl, prefix=f"expires-{minutes}")[0]


async def _keys(db: Database) -> list[str]:
    rows = await db.read(
        lambda session: session.execute(text("SELECT key FROM idempotency_records"))
    )
    return sorted(str(key) for (key,) in rows)


async def test_find_returns_the_kept_answers_of_the_keys_asked_only(db: Database) -> None:
    async def store(session: AsyncSession) -> None:
        await idempotency.remember(session, _rows("org:a", 1_500) + _rows("org:b", 10))

    await db.write(store)
    asked = [f"key-{n}" for n in range(0, 3_000, 2)]  # half of them stored, over 1,000 keys

    found = await db.read(lambda session: idempotency.find(session, "org:a", asked))

    assert sorted(found) == sorted(f"key-{n}" for n in range(0, 1_500, 2))
    assert found["key-4"] == idempotency.Stored("key-4", "print-4", 200, '{"n":1}')
    assert await db.read(lambda session: idempotency.find(session, "org:b", ["key-11"])) == {}


async def test_the_lookup_of_a_batch_uses_the_index_with_stale_statistics(pg: Database) -> None:
    async def fill(session: AsyncSession) -> None:
        # Statistics taken while the scope had a handful of keys, then 20,000 more: the
        # planner believes the table is tiny, where `key IN (…)` would read all of it.
        await idempotency.remember(session, _rows("org:a", 10))
        await session.execute(text("ANALYZE idempotency_records"))
        await session.execute(text("DELETE FROM idempotency_records"))
        await idempotency.remember(session, _rows("org:a", 20_000))

    await pg.write(fill)
    keys = [f"key-{n}" for n in range(1_000)]

    async def plan(session: AsyncSession) -> str:
        explained = await session.execute(
            text(f"EXPLAIN {idempotency.PROBE.text}"), {"keys": keys, "scope": "org:a"}
        )
        return "\n".join(row[0] for row in explained)

    shown = await pg.read(plan)

    assert "Index" in shown, shown
    assert "Seq Scan on idempotency_records" not in shown, shown
    found = await pg.read(lambda session: idempotency.find(session, "org:a", keys))
    assert len(found) == 1_000


async def test_a_purge_forgets_at_most_its_limit_the_first_to_expire_first(db: Database) -> None:
    async def store(session: AsyncSession) -> None:
        await idempotency.remember(session, [_expiring(m) for m in (5, 1, 7, 3, 2, 6, 4, 90)])

    await db.write(store)
    now = START + timedelta(minutes=30)  # seven have expired, one has an hour to go

    purged = await db.write(lambda session: idempotency.purge(session, now, limit=3))

    assert purged == 3
    assert await _keys(db) == [f"expires-{m}-0" for m in (4, 5, 6, 7, 90)]


async def test_the_sweeper_purges_every_expired_key_a_chunk_a_transaction(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def store(session: AsyncSession) -> None:
        await idempotency.remember(session, [_expiring(m) for m in range(1, 8)] + _rows("org:b", 2))

    await db.write(store)
    monkeypatch.setattr(idempotency, "PURGE_CHUNK", 2)
    chunks: list[int] = []
    purge = idempotency.purge

    async def counted(session: AsyncSession, now: datetime, *, limit: int = 2) -> int:
        chunks.append(await purge(session, now, limit=limit))
        return chunks[-1]

    monkeypatch.setattr(idempotency, "purge", counted)

    purged = await sweeper.purge_idempotency_keys(db, FakeClock(START + timedelta(hours=1)))

    assert purged == 7
    assert chunks == [2, 2, 2, 1]
    assert await _keys(db) == ["key-0", "key-1"]  # org:b's, a day to live


async def test_the_purge_reads_the_expiry_index_with_stale_statistics(pg: Database) -> None:
    async def fill(session: AsyncSession) -> None:
        # Statistics taken while every key had expired, then 20,000 keys that have not: the
        # planner believes every key is to go, and a bare `DELETE … WHERE expires_at < now`
        # is planned as a read of the whole table.
        await idempotency.remember(session, [_expiring(m) for m in range(1, 11)])
        await session.execute(text("ANALYZE idempotency_records"))
        await idempotency.remember(session, _rows("org:b", 20_000))

    await pg.write(fill)
    now = START + timedelta(hours=1)

    async def plan(session: AsyncSession) -> str:  # in one transaction, as `purge` runs
        await session.execute(idempotency.PURGE_PLAN)
        statement = idempotency.purging(now, idempotency.PURGE_CHUNK, "postgresql")
        compiled = statement.compile(
            dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
        )
        explained = await session.execute(text(f"EXPLAIN {compiled}"))
        return "\n".join(row[0] for row in explained)

    shown = await pg.read(plan)

    assert "Index Scan using ix_idempotency_records_expires_at" in shown, shown
    assert "Seq Scan on idempotency_records" not in shown, shown
    assert await pg.write(lambda session: idempotency.purge(session, now)) == 10


async def test_keys_whose_32_bit_hashes_are_equal_are_not_each_others_in_flight(
    pg: Database,
) -> None:
    # Two keys of one scope that a 32-bit hash (hashtext) cannot tell apart, among 200,000.
    found = await pg.read(
        lambda session: session.execute(
            text(
                "SELECT min(k), max(k) FROM (SELECT 'key-' || g AS k FROM"
                " generate_series(1, 200000) AS g) AS keys"
                " GROUP BY hashtext('org:a ' || k) HAVING count(*) > 1 LIMIT 1"
            )
        )
    )
    first_key, second_key = found.one()

    async with (
        AsyncSession(pg.engine) as first,
        first.begin(),
        AsyncSession(pg.engine) as second,
        second.begin(),
    ):
        held = await idempotency.claim(first, "org:a", [first_key])
        other = await idempotency.claim(second, "org:a", [second_key])
        again = await idempotency.claim(second, "org:a", [first_key])

    assert held == set()
    assert other == set()  # not refused as in flight: another key
    assert again == {first_key}  # the same key is
