"""The gateway's tests: tokenadmin and the fake upstream served by uvicorn on loopback in
the test's event loop (so a test can look at the database and the gateway while a request
is under way), and the official `openai` client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.gateway.upstream import FakeUpstream, serving
from tests.helpers import Api, funded_org
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import create_app
from tokenadmin.catalog import service as catalog
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.gateway.service import Gateway
from tokenadmin.models import JournalEntry, Reservation, User

MODEL = "gpt-test"
UPSTREAM_MODEL = "fake-model-1"
PROMPT_RATE = "1"
COMPLETION_RATE = "2.5"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeUpstream, str]]:
    upstream = FakeUpstream()
    async with serving(upstream.app()) as url:
        yield upstream, f"{url}/v1"
    upstream.release()


@dataclass
class World:
    app: FastAPI
    url: str  # tokenadmin's base URL
    db: Database
    api: Api
    upstream: FakeUpstream
    org_id: str
    user_id: str
    email: str
    personal_key: str
    service_key: str
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def client(self, key: str | None = None) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(
            api_key=key or self.personal_key, base_url=f"{self.url}/openai/v1", max_retries=0
        )
        self.clients.append(client)
        return client

    async def user(self, user_id: str | None = None) -> User:
        async def read(session: Any) -> User:
            found = await session.get(User, uuid.UUID(user_id or self.user_id))
            assert found is not None
            return found  # type: ignore[no-any-return]

        return await self.db.read(read)

    async def reservations(self) -> list[Reservation]:
        return list(
            await self.db.read(
                lambda s: _all(s, select(Reservation).order_by(Reservation.created_at))
            )
        )

    async def journal(self, action: str) -> list[JournalEntry]:
        query = select(JournalEntry).where(JournalEntry.action == action).order_by(JournalEntry.id)
        return list(await self.db.read(lambda s: _all(s, query)))

    async def journal_used(self) -> int:
        query = select(func.coalesce(func.sum(JournalEntry.used_delta), 0))
        total = await self.db.read(lambda s: s.scalar(query))
        return int(total or 0)


async def _all(session: Any, query: Any) -> Any:
    return (await session.scalars(query)).all()


@pytest.fixture
async def world(
    fake: tuple[FakeUpstream, str], db: Database, clock: FakeClock, database_url: str, api: Api
) -> AsyncIterator[World]:
    upstream, upstream_url = fake
    org_id = await funded_org(api, inference=1_000_000, training=100_000)
    user = await api.user(org_id, "ana@example.com", max_train_tokens=10_000)
    act = Act("test", clock.now())

    async def setup(session: Any) -> str:
        await catalog.set_model(
            session, act, None, MODEL,
            prompt_rate=PROMPT_RATE, completion_rate=COMPLETION_RATE,
            upstream_base_url=upstream_url, upstream_api_key="sk-upstream",
            upstream_model=UPSTREAM_MODEL,
        )  # fmt: skip
        member = await session.get(User, uuid.UUID(user["id"]))
        _, secret = await api_key_service.create_personal(session, act, member, name="laptop")
        return secret

    personal = await db.write(setup)
    service_key = await api.key(org_id, "usage")
    app = create_app(
        Settings(database_url=database_url), clock=clock, database=db, run_sweeper=False
    )
    async with serving(app, lifespan="on") as url:
        world = World(
            app, url, db, api, upstream, org_id, user["id"], user["email"], personal, service_key
        )
        try:
            yield world
        finally:
            upstream.release()
            for client in world.clients:
                await client.close()
