"""Exactness under concurrency: many processes, one PostgreSQL, no overshoot, nothing lost."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.servers import WHOLE_MACHINE, running_servers
from tests.traffic import operator_key
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.models import JournalEntry, Organization, User

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


async def test_concurrent_metering_where_the_capacity_binds_never_overshoots_it(
    pg: Database, postgres_url: str
) -> None:
    """Rule 3 on three processes: allowances of 2,000,000 against 1,000,000 bought, usage
    and batches from the organization's key (the engine's path, batches skipping users
    locked elsewhere), every transaction serialized on the organization's row and its
    running totals."""
    operator = await operator_key(pg)
    capacity = 1_000_000
    rng = random.Random(11)
    sizes = [3_000, 5_000, 7_919, 11_000]
    singles = [rng.choice(sizes) for _ in range(150)]
    batches = [[rng.choice(sizes) for _ in range(10)] for _ in range(20)]
    assert sum(singles) + sum(map(sum, batches)) > capacity  # the capacity runs out mid-run

    with running_servers(postgres_url, 3) as urls:
        headers = {"Authorization": f"Bearer {operator}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as http:
            org = (
                await http.post(
                    f"{urls[0]}/v1/organizations", json={"name": "Bound", "overallocation": True}
                )
            ).json()
            base = f"{urls[0]}/v1/organizations/{org['id']}"
            await http.post(f"{base}/purchases", json={"inference_amount": capacity})
            users = []
            for index in range(5):
                body = {
                    "email": f"u{index}@bound.example",
                    "name": f"U{index}",
                    "max_tokens": 400_000,
                }
                users.append((await http.post(f"{base}/users", json=body)).json()["id"])
            key = await http.post(f"{base}/api-keys", json={"name": "meter", "scopes": ["usage"]})
            meter = {"Authorization": f"Bearer {key.json()['key']}"}

            unexpected: list[str] = []
            refused_by: list[str] = []

            async def send(index: int, path: str, body: dict[str, Any]) -> httpx.Response:
                response = await http.post(
                    f"{urls[index % len(urls)]}{path}",
                    json=body,
                    headers={**meter, "Idempotency-Key": uuid.uuid4().hex},
                )
                if response.status_code not in (200, 402):
                    unexpected.append(f"{response.status_code} {response.text[:300]}")
                return response

            async def debit(index: int, tokens: int) -> int:
                body = {"user": rng.choice(users), "kind": "inference", "tokens": tokens}
                response = await send(index, "/v1/usage", body)
                if response.status_code == 402:
                    refused_by.append(response.json()["error"]["details"]["limited_by"])
                return tokens if response.status_code == 200 else 0

            async def batch(index: int, amounts: list[int]) -> int:
                events = [
                    {
                        "user": rng.choice(users),
                        "kind": "inference",
                        "tokens": tokens,
                        "idempotency_key": uuid.uuid4().hex,
                    }
                    for tokens in amounts
                ]
                response = await send(index, "/v1/usage/batch", {"events": events})
                results = response.json()["results"] if response.status_code == 200 else []
                return sum(
                    tokens
                    for tokens, result in zip(amounts, results, strict=True)
                    if result["status"] == 200
                )

            work = [debit(i, t) for i, t in enumerate(singles)]
            work += [batch(i, amounts) for i, amounts in enumerate(batches)]
            rng.shuffle(work)
            accepted = sum(await asyncio.gather(*work))

    assert not unexpected, unexpected
    assert capacity - max(sizes) < accepted <= capacity
    assert "organization" in refused_by

    async def stored(session: AsyncSession) -> tuple[Any, ...]:
        org_id = uuid.UUID(org["id"])
        used = await session.scalar(
            select(func.sum(User.inference_used)).where(User.org_id == org_id)
        )
        journaled = await session.scalar(
            select(func.sum(JournalEntry.used_delta)).where(
                JournalEntry.org_id == org_id, JournalEntry.action == "usage"
            )
        )
        row = await session.get(Organization, org_id)
        assert row is not None
        return used, journaled, row.used_inference, row.reserved_inference

    assert await pg.read(stored) == (accepted, accepted, accepted, 0)
    report = await pg.read(verify)
    assert report.clean, report.differences
