"""The idempotency lookup probes the keys' index, whatever the planner's statistics say."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import START
from tokenadmin.database import Database
from tokenadmin.idempotency import service as idempotency
from tokenadmin.idempotency.service import Answer


def _rows(scope: str, count: int) -> list[dict[str, object]]:
    answer = Answer(200, {"n": 1})
    return [
        idempotency.remembered(scope, f"key-{n}", f"print-{n}", answer, START, timedelta(days=1))
        for n in range(count)
    ]


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
