"""The database out of reach: every request answers 503 `unavailable` (send it again with the
same key), never a 500; connections the database cut are replaced without a restart. The
crash tests (tests/test_crash.py) show the same under load, with the database crashed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import QueuePool

from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import Api, funded_org
from tests.servers import free_port
from tokenadmin import deps
from tokenadmin.app import create_app
from tokenadmin.config import Settings
from tokenadmin.database import UNREACHABLE, Database
from tokenadmin.deps import csv_download
from tokenadmin.errors import Unavailable
from tokenadmin.organization import service as organization_service


async def test_a_database_out_of_reach_answers_503_unavailable_and_never_500() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"  # nothing listens there
    app = create_app(Settings(database_url=url), run_sweeper=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as client:
        requests = [
            ("GET", "/healthz", None, {}),
            (
                "POST",
                "/v1/usage",
                {"user": "ana@example.com", "kind": "inference", "tokens": 1},
                {"Authorization": "Bearer ta_unknown", "Idempotency-Key": "k1"},
            ),
            ("GET", "/v1/organizations", None, {"Authorization": "Bearer ta_unknown"}),
        ]
        for method, path, body, headers in requests:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "unavailable", (path, error)
            assert "same Idempotency-Key" in error["message"]
    await app.state.db.dispose()


@pytest.mark.postgres_only
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_connections_the_database_cut_are_replaced_without_a_restart(
    api: Api, db: Database
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 10, expect=200)

    # As a database restart or failover would: every connection of the service is cut.
    database = db.engine.url.database
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        cut = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()) AS terminated",
            database,
        )
    finally:
        await admin.close()
    assert cut > 0

    await api.use(ana["id"], 10, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 20


async def test_a_write_cut_off_from_the_database_is_applied_when_sent_again_with_its_key(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 503 is not remembered as the key's answer (only answers the client may rely on
    are), so the resend the message asks for applies the change."""
    org = await funded_org(api)
    update_policy = organization_service.update_policy

    async def cut_off(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(organization_service, "update_policy", update_policy)
        lost = ConnectionResetError("connection reset by peer")
        raise DBAPIError("UPDATE organizations", {}, lost, connection_invalidated=True)

    monkeypatch.setattr(organization_service, "update_policy", cut_off)
    body = {"name": "Renamed"}
    first = await api.call("PATCH", f"/v1/organizations/{org}", json=body, idempotency_key="k-1")
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "unavailable"
    assert (await api.get(f"/v1/organizations/{org}"))["name"] != "Renamed"

    again = await api.call("PATCH", f"/v1/organizations/{org}", json=body, idempotency_key="k-1")
    assert again.status_code == 200, again.text
    assert again.headers.get("Idempotent-Replayed") is None
    assert (await api.get(f"/v1/organizations/{org}"))["name"] == "Renamed"
    replayed = await api.call("PATCH", f"/v1/organizations/{org}", json=body, idempotency_key="k-1")
    assert replayed.headers.get("Idempotent-Replayed") == "true"


async def test_a_csv_download_opens_its_snapshot_before_the_answer_starts(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a database out of reach answers 503, not a 200 whose file is cut short; and the
    snapshot is closed once the file is sent."""

    async def produce(session: AsyncSession) -> AsyncIterator[str]:
        yield "organizations\n"
        yield f"{await session.scalar(text('SELECT count(*) FROM organizations'))}\n"

    response = await csv_download(db, produce, "file.csv")
    assert [chunk async for chunk in response.body_iterator] == ["organizations\n", "0\n"]
    assert response.background is not None
    await response.background()  # as Starlette runs it after sending: closing again is harmless
    pool = db.read_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0

    @asynccontextmanager
    async def out_of_reach(*, snapshot: bool = False) -> AsyncIterator[AsyncSession]:
        raise Unavailable(UNREACHABLE)
        yield  # pragma: no cover

    monkeypatch.setattr(db, "reading", out_of_reach)
    with pytest.raises(Unavailable):
        await csv_download(db, produce, "file.csv")


@pytest.mark.postgres_only
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_csv_download_whose_client_stalls_gives_its_connection_back(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def produce(session: AsyncSession) -> AsyncIterator[str]:
        yield str(await session.scalar(text("SHOW idle_in_transaction_session_timeout")))

    response = await csv_download(db, produce, "file.csv")
    assert [chunk async for chunk in response.body_iterator] == ["1min"]

    # A client that stops reading (here: for longer than a shortened limit) loses its
    # download when it is next read for, and the connection is not kept.
    monkeypatch.setattr(deps, "STALLED", "100ms")

    async def stalled(session: AsyncSession) -> AsyncIterator[str]:
        yield "first\n"
        await asyncio.sleep(0.5)  # the client has not read the first part yet
        yield str(await session.scalar(text("SELECT 1")))

    response = await csv_download(db, stalled, "file.csv")
    chunks = aiter(response.body_iterator)
    assert await anext(chunks) == "first\n"
    with pytest.raises(Unavailable) as lost:
        await anext(chunks)
    assert "connection is closed" in str(lost.value.__cause__)  # by the server, idle too long
    pool = db.read_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.checkedout() == 0
