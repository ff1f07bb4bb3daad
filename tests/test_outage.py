"""The database out of reach: every request answers 503 `unavailable` (send it again with the
same key), never a 500; connections the database cut are replaced without a restart. The
crash tests (tests/test_crash.py) show the same under load, with the database crashed."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import Api, funded_org
from tests.servers import free_port
from tokenadmin.app import create_app
from tokenadmin.config import Settings
from tokenadmin.database import Database


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
async def test_connections_the_database_cut_are_replaced_without_a_restart(
    api: Api, db: Database
) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL's connections only")
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
