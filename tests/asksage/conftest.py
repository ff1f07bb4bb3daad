"""Fixtures of the Ask Sage API tests: an organization with an administrator and a member,
each with a personal API key, and a live server on a port for `asksageclient` (which
calls with `requests`, synchronously)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.servers import free_port
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import create_app
from tokenadmin.catalog import service as catalog
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.user import repository as user_repository


@dataclass(frozen=True)
class Person:
    id: str
    email: str
    key: str


@dataclass(frozen=True)
class Org:
    id: str
    admin: Person
    member: Person


async def personal_key(db: Database, clock: FakeClock, user_id: str) -> str:
    """A new personal API key of the user (api_key.service, as the API's route makes one)."""

    async def work(session: AsyncSession) -> str:
        user = await user_repository.get(session, uuid.UUID(user_id))
        assert user is not None
        act = Act("test", clock.now())
        _, secret = await api_key_service.create_personal(session, act, user, name="mine")
        return secret

    return await db.write(work)


async def demo_model(db: Database, clock: FakeClock, org_id: str, **rates: Any) -> None:
    """The built-in demo model ("demo-echo", answered in this process) for the organization,
    at 1 token a token unless `rates` say otherwise."""
    rate = {"prompt_rate": 1, "completion_rate": 1, **rates}

    async def work(session: AsyncSession) -> None:
        await catalog.set_model(
            session,
            Act("test", clock.now()),
            uuid.UUID(org_id),
            "demo-echo",
            upstream_base_url=catalog.DEMO_BASE_URL,
            **rate,
        )

    await db.write(work)


async def make_org(api: Api, db: Database, clock: FakeClock, name: str = "Acme") -> Org:
    org_id = await funded_org(api, 1_000_000, 100_000, name=name)
    await demo_model(db, clock, org_id)
    people = []
    for role in ("admin", "member"):
        email = f"{role}.{name.lower()}@example.com"
        user = await api.user(org_id, email, role=role, max_train_tokens=10_000)
        people.append(Person(user["id"], user["email"], await personal_key(db, clock, user["id"])))
    return Org(org_id, *people)


@pytest.fixture
async def org(api: Api, db: Database, clock: FakeClock) -> Org:
    return await make_org(api, db, clock)


class LiveServer:
    """The app served by uvicorn on a loopback port, in a thread of this process (its own
    event loop and database connections), for synchronous clients."""

    def __init__(self, database_url: str, clock: FakeClock) -> None:
        app = create_app(Settings(database_url=database_url), clock=clock, run_sweeper=False)
        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            self.thread.join(0.01)
        assert httpx.get(f"{self.url}/healthz").status_code == 200

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    @property
    def user_url(self) -> str:
        return f"{self.url}/user"

    @property
    def server_url(self) -> str:
        return f"{self.url}/server"


@pytest.fixture
def live(db: Database, database_url: str, clock: FakeClock) -> Iterator[LiveServer]:
    server = LiveServer(database_url, clock)
    server.start()
    yield server
    server.stop()
