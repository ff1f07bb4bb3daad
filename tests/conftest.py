"""Fixtures: every test that takes `db` runs on SQLite and on PostgreSQL.

PostgreSQL: a database is created for the session (and dropped after it) on the server named
by TOKENADMIN_TEST_POSTGRES_URL (default: postgres on 127.0.0.1:5432); tables are emptied
before each test. When the server can't be reached the PostgreSQL runs are skipped, unless
TOKENADMIN_REQUIRE_POSTGRES=1 (as in CI), where they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
import requests.adapters
from _pytest.nodeid import NodeId
from fastapi import FastAPI

from tests.databases import empty_postgres
from tests.helpers import Api
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.app import create_app
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.journal.service import verify
from tokenadmin.migrate import upgrade


def _without_pip_system_certs_patch() -> None:
    """pip_system_certs (installed beside asksageclient, which imports it) patches every
    `requests` adapter to load the system's CA bundle when it is made: 36 ms each, for
    connections the tests make only to loopback over plain HTTP. Schemathesis makes an
    adapter per case, so the patch cost it minutes; the tests use requests as it is."""
    adapter = requests.adapters.HTTPAdapter
    for name in ("init_poolmanager", "cert_verify"):
        original = getattr(vars(adapter).get(name), "__wrapped__", None)
        if original is not None:
            setattr(adapter, name, original)


_without_pip_system_certs_patch()

# pytest-xdist's workers start with COLUMNS=80 and LINES=24 in their environment, where a
# plain pytest run has neither: the command's tables (rich reads COLUMNS) would fold to 80
# columns there and their text tests fail. The tests read the output a pipe gets.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under --dist loadgroup, pytest-xdist 3.8.0 tells its scheduler a test's xdist_group by
    appending "@group" to the node id, through an attribute pytest 9.2 no longer reads
    (pytest-dev/pytest-xdist#1386): the groups are silently ignored and the WHOLE_MACHINE
    tests spread over both workers. Until a release fixes it, append it where pytest keeps
    the id (a worker's collection, as pytest-xdist does)."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        groups = sorted(
            {
                str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                for mark in item.iter_markers("xdist_group")
            }
        )
        suffix = "@" + "_".join(groups)
        if groups and not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)


POSTGRES_ADMIN_URL = os.environ.get(
    "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("TOKENADMIN_REQUIRE_POSTGRES") == "1"
START = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def _asyncpg_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(_asyncpg_url(POSTGRES_ADMIN_URL), timeout=5)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    name = f"tokenadmin_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required but unreachable: {error}")
        pytest.skip(f"PostgreSQL unreachable ({error}); set TOKENADMIN_REQUIRE_POSTGRES=1 to fail")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "tokenadmin.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    """An emptied PostgreSQL database alone, for the tests of several server processes."""
    database = Database(postgres_url, pool_size=5)
    await empty_postgres(database)
    yield database
    await database.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def db(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=5)
    if not database.is_sqlite:
        await empty_postgres(database)
    yield database
    if "tampers" not in request.keywords:
        report = await database.read(verify)
        assert report.clean, "tokenadmin verify found differences:\n" + "\n".join(
            report.differences
        )
    await database.dispose()


@pytest.fixture
def app(db: Database, clock: FakeClock, database_url: str) -> FastAPI:
    return create_app(
        Settings(database_url=database_url), clock=clock, database=db, run_sweeper=False
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as c:
        yield c


@pytest.fixture
async def operator_key(db: Database, clock: FakeClock) -> str:
    _, secret = await db.write(
        lambda s: api_key_service.create(
            s, Act("test", clock.now()), org_id=None, name="ops", scopes=["admin", "usage", "read"]
        )
    )
    return secret


@pytest.fixture
def api(client: httpx.AsyncClient, operator_key: str) -> Api:
    return Api(client, operator_key)
