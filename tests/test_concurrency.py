"""Exactness under concurrency: many processes, one PostgreSQL, no overshoot, nothing lost."""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.servers import WHOLE_MACHINE, running_servers
from tests.traffic import operator_key
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.models import JournalEntry, User

pytestmark = [pytest.mark.slow, WHOLE_MACHINE]


async def test_200_concurrent_debits_from_three_processes_never_overshoot(
    pg: Database, postgres_url: str
) -> None:
    operator = await operator_key(pg)
    allowance = 1_000_000
    rng = random.Random(7)
    amounts = [rng.choice([3_000, 5_000, 7_919, 11_000]) for _ in range(200)]
    assert sum(amounts) > allowance  # the allowance runs out mid-run

    with running_servers(postgres_url, 3) as urls:
        headers = {"Authorization": f"Bearer {operator}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            org = (await http.post(f"{urls[0]}/v1/organizations", json={"name": "Race"})).json()
            await http.post(
                f"{urls[0]}/v1/organizations/{org['id']}/purchases",
                json={"inference_amount": 5_000_000},
            )
            user = (
                await http.post(
                    f"{urls[0]}/v1/organizations/{org['id']}/users",
                    json={"email": "hot@example.com", "name": "Hot", "max_tokens": allowance},
                )
            ).json()

            unexpected: list[str] = []

            async def debit(index: int, tokens: int) -> tuple[int, int]:
                response = await http.post(
                    f"{urls[index % len(urls)]}/v1/usage",
                    json={"user": user["id"], "kind": "inference", "tokens": tokens},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                if response.status_code not in (200, 402):
                    unexpected.append(f"{response.status_code} {response.text[:300]}")
                return response.status_code, tokens

            outcomes = await asyncio.gather(*(debit(i, t) for i, t in enumerate(amounts)))

    assert not unexpected, unexpected
    accepted = sum(tokens for status, tokens in outcomes if status == 200)
    accepted_count = sum(1 for status, _ in outcomes if status == 200)
    assert 0 < accepted <= allowance
    assert any(status == 402 for status, _ in outcomes)

    async def stored(session: AsyncSession) -> tuple[int | None, int | None, int | None]:
        user_id = uuid.UUID(user["id"])
        used = await session.scalar(select(User.inference_used).where(User.id == user_id))
        entries = await session.scalar(select(func.count()).where(JournalEntry.action == "usage"))
        journaled = await session.scalar(
            select(func.sum(JournalEntry.used_delta)).where(JournalEntry.action == "usage")
        )
        return used, entries, journaled

    used, entries, journaled = await pg.read(stored)
    assert used == accepted
    assert entries == accepted_count
    assert journaled == accepted
    report = await pg.read(verify)
    assert report.clean, report.differences
