"""GET /metrics (Prometheus, behind its own token), GET /readyz, and the JSON access line."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import Api, funded_org
from tests.scenarios import event, reserve
from tests.servers import Server
from tests.test_webhooks import Receiver, emit
from tokenadmin import logs
from tokenadmin.app import create_app
from tokenadmin.clock import FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.migrate import alembic_config, upgrade
from tokenadmin.webhooks import delivery

TOKEN = "metrics-" + uuid.uuid4().hex
SCRAPER = {"Authorization": f"Bearer {TOKEN}"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def metered_app(db: Database, clock: FakeClock, database_url: str) -> FastAPI:
    settings = Settings(database_url=database_url, metrics_token=TOKEN)
    return create_app(settings, clock=clock, database=db, run_sweeper=False)


@pytest.fixture
async def scraper(metered_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=metered_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as c:
        yield c


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


# --- /metrics -------------------------------------------------------------------------------


async def test_metrics_are_off_without_a_metrics_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers=SCRAPER)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "TOKENADMIN_METRICS_TOKEN" in response.json()["error"]["message"]


async def test_metrics_answer_only_their_token_and_time_requests_by_route_template(
    scraper: httpx.AsyncClient, operator_key: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = await scraper.get("/metrics", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthenticated"
        assert refused.headers["www-authenticate"] == "Bearer"
    # An API key is no metrics token, and the metrics token is no API key.
    assert (await scraper.get("/metrics", headers=_bearer(operator_key))).status_code == 401
    assert (await scraper.get("/v1/organizations", headers=SCRAPER)).status_code == 401

    route = {"method": "GET", "route": "/v1/users/{user_id}", "status": "4xx"}
    before = await scrape(scraper)
    for _ in range(3):
        missing = await scraper.get(f"/v1/users/{uuid.uuid4()}", headers=_bearer(operator_key))
        assert missing.status_code == 404
    after = await scrape(scraper)

    name = "tokenadmin_http_request_duration_seconds"
    assert value(after, f"{name}_count", **route) - value(before, f"{name}_count", **route) == 3
    assert value(after, f"{name}_bucket", **route, le="+Inf") == value(
        after, f"{name}_count", **route
    )
    # Never the raw path: one label value per route, whatever the ids asked for.
    assert not [labels for (_, labels) in after if ("route", "/v1/users/") in labels]
    assert value(after, "tokenadmin_db_pool_size", pool="write") >= 1


async def test_usage_counters_move_by_exactly_what_was_accepted_and_refused(
    scraper: httpx.AsyncClient, operator_key: str
) -> None:
    api = Api(scraper, operator_key)
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")  # the minimum: 200,000 inference tokens
    accepted = {"org_id": org, "kind": "inference", "action": "usage"}
    refused = {**accepted, "outcome": "refused", "code": "insufficient_tokens"}
    before = await scrape(scraper)

    await api.use(ana["id"], 1_000, key="first", expect=200)
    await api.use(ana["id"], 2_500, expect=200)
    await api.use(ana["id"], 1_000, key="first", expect=200)  # a replay counts nothing more
    await api.use(ana["id"], 900_000, expect=402)
    await reserve(api, ana["id"], 7_000)
    # One transaction of five events, four accepted and one refused: each counted once.
    events = [event(ana["id"], tokens) for tokens in (100, 200, 300, 400, 900_000)]
    result = await api.post("/v1/usage/batch", {"events": events}, expect=200)
    assert (result["accepted"], result["refused"]) == (4, 1)
    after = await scrape(scraper)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {**accepted, "outcome": "accepted", "code": ""}
    assert moved("tokenadmin_usage_requests_total", **ok) == 2 + 4
    assert moved("tokenadmin_usage_tokens_total", **ok) == 3_500 + 1_000
    assert moved("tokenadmin_usage_requests_total", **refused) == 1 + 1
    assert moved("tokenadmin_usage_tokens_total", **refused) == 900_000 * 2
    held = {**ok, "action": "reserve"}
    assert moved("tokenadmin_usage_requests_total", **held) == 1
    assert value(after, "tokenadmin_reservations_open", org_id=org, kind="inference") == 1
    assert value(after, "tokenadmin_reservations_open_tokens", org_id=org, kind="inference") == (
        7_000
    )


async def test_job_runs_and_lag_come_from_the_job_leases(
    scraper: httpx.AsyncClient, metered_app: FastAPI, clock: FakeClock
) -> None:
    job = {"job": "reservations.expire"}
    before = await scrape(scraper)
    assert await metered_app.state.jobs.run_due()
    ran = await scrape(scraper)
    assert value(ran, "tokenadmin_job_runs_total", **job) == 1 + value(
        before, "tokenadmin_job_runs_total", **job
    )
    assert value(ran, "tokenadmin_job_last_ok", **job) == 1
    assert value(ran, "tokenadmin_job_lag_seconds", **job) == 0  # not due again yet

    clock.advance(hours=1)  # no process ran it for an hour
    late = await scrape(scraper)
    interval = metered_app.state.jobs.jobs["reservations.expire"].interval.total_seconds()
    assert value(late, "tokenadmin_job_lag_seconds", **job) == 3600 - interval


async def test_webhook_counters_move_by_each_attempts_result_and_pending_is_read_from_the_db(
    scraper: httpx.AsyncClient, operator_key: str, db: Database, clock: FakeClock
) -> None:
    receiver = Receiver(status=500)
    await receiver.start()
    try:
        api = Api(scraper, operator_key)
        org = await funded_org(api)
        await api.post(f"/v1/organizations/{org}/webhooks", {"url": receiver.url}, expect=201)
        await emit(db, clock, org)
        before = await scrape(scraper)
        await delivery.deliver(db, clock)  # refused: tried again in 30 s
        failing = await scrape(scraper)
        receiver.status = 200
        clock.advance(seconds=30)
        await delivery.deliver(db, clock)
        after = await scrape(scraper)
    finally:
        await receiver.stop()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tokenadmin_webhook_deliveries_total", result="failed_attempt") == 1
    assert moved("tokenadmin_webhook_deliveries_total", result="delivered") == 1
    assert moved("tokenadmin_webhook_deliveries_total", result="gave_up") == 0
    assert moved("tokenadmin_webhook_delivery_seconds_count") == 2
    assert value(failing, "tokenadmin_notifications_pending", channel="webhook") == 1
    assert value(after, "tokenadmin_notifications_pending", channel="webhook") == 0
    assert value(after, "tokenadmin_notifications_pending", channel="email") == 0


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# --- several processes ----------------------------------------------------------------------


class Served(Server):
    """`tokenadmin serve --workers N`, as an operator starts it."""

    def __init__(self, database_url: str, workers: int, environment: dict[str, str]) -> None:
        super().__init__(database_url, environment=environment)
        self.workers = workers

    def start(self) -> None:
        command = [sys.executable, "-m", "tokenadmin", "serve", "--port", str(self.port)]
        command += ["--workers", str(self.workers)]
        self.process = subprocess.Popen(command, env=self.environment, stdout=subprocess.DEVNULL)


@pytest.fixture
def two_workers(sqlite_template: Path, tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    database = tmp_path / "tokenadmin.db"
    shutil.copy(sqlite_template, database)
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"")  # a previous run's: emptied at start
    environment = {"TOKENADMIN_METRICS_TOKEN": TOKEN, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    server = Served(f"sqlite:///{database}", 2, environment)
    server.start()
    try:
        server.wait_ready()
        yield server, directory
    finally:
        server.stop()


def test_a_scrape_of_any_worker_reports_the_sum_of_all_workers(
    two_workers: tuple[Server, Path],
) -> None:
    server, directory = two_workers
    route = {"method": "GET", "route": "/readyz", "status": "2xx"}
    sent = 0

    async def send(count: int) -> None:
        # A connection each, at once: the workers take turns accepting them.
        async def one() -> None:
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/readyz")).status_code == 200

        await asyncio.gather(*(one() for _ in range(count)))

    count = "tokenadmin_http_request_duration_seconds_count"
    # Until both workers have answered some (each writes its own file of histograms).
    while len([n for n in _per_process(directory, count, route) if n > 0]) < 2:
        assert sent < 2_000, "one worker served every request"
        asyncio.run(send(20))
        sent += 20
    assert sum(_per_process(directory, count, route)) == sent
    assert not (directory / "counter_1.db").exists()

    for _ in range(4):  # whichever worker answers, it reports every worker's requests
        scraped = samples(httpx.get(f"{server.url}/metrics", headers=SCRAPER).text)
        assert value(scraped, count, **route) == sent
        assert value(scraped, "tokenadmin_db_pool_size", pool="write") == 2  # one a worker


def _per_process(directory: Path, name: str, labels: dict[str, str]) -> list[float]:
    """A sample's value in each process's own file."""
    values = []
    for path in sorted(directory.glob("histogram_*.db")):
        alone = directory.parent / "alone" / path.stem
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        values.append(value(samples(generate_latest(registry).decode()), name, **labels))
    return values


# --- /readyz --------------------------------------------------------------------------------


async def test_readyz_is_ready_on_a_migrated_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert body["checks"]["migrations"] == {"ok": True, "message": ANY_TEXT, "revision": [head]}
    assert body["checks"]["database"]["ok"] is True


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT = _AnyText()


async def _ready(database_url: str) -> httpx.Response:
    db = Database(database_url, pool_size=1)
    app = create_app(Settings(database_url=database_url), database=db, run_sweeper=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            return await client.get("/readyz")
    finally:
        await db.dispose()


def _not_ready(response: httpx.Response, failed: list[str]) -> dict[str, dict[str, object]]:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert error["details"]["failed"] == failed
    checks: dict[str, dict[str, object]] = error["details"]["checks"]
    return checks


@pytest.fixture
async def empty_database_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database of the same kind that no migration ever ran on."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"tokenadmin_empty_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(admin, timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def test_readyz_is_not_ready_on_a_database_without_migrations(
    empty_database_url: str,
) -> None:
    checks = _not_ready(await _ready(empty_database_url), ["migrations"])
    assert checks["database"]["ok"] is True
    assert "tokenadmin migrate" in str(checks["migrations"]["message"])


async def test_readyz_is_not_ready_behind_the_newest_migration_or_without_a_database(
    tmp_path: Path,
) -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    head = script.get_current_head()
    assert head is not None
    previous = script.get_revision(head).down_revision
    assert isinstance(previous, str)
    behind = f"sqlite:///{tmp_path / 'behind.db'}"
    await asyncio.to_thread(upgrade, behind, previous)
    checks = _not_ready(await _ready(behind), ["migrations"])
    assert checks["migrations"]["revision"] == [previous]

    gone = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    checks = _not_ready(await _ready(gone), ["database", "migrations"])
    assert checks["database"]["ok"] is False


# --- the JSON log ---------------------------------------------------------------------------


async def test_a_json_access_line_carries_the_request_id_and_the_route_template(
    db: Database, clock: FakeClock, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=database_url, log_format="json")
    app = create_app(settings, clock=clock, database=db, run_sweeper=False)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            capsys.readouterr()
            answer = await client.get(f"/v1/users/{uuid.uuid4()}", headers={"X-Request-ID": "r-1"})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logs.configure(Settings(database_url=database_url))  # text again, for the other tests

    [access] = [line for line in lines if line["logger"] == "tokenadmin.access"]
    assert answer.headers["X-Request-ID"] == "r-1"
    assert {key: access[key] for key in ("request_id", "method", "route", "status")} == {
        "request_id": "r-1",
        "method": "GET",
        "route": "/v1/users/{user_id}",
        "status": 401,
    }
    assert access["level"] == "INFO"
    assert access["time"].endswith("+00:00")
    assert isinstance(access["duration_ms"], float)
    assert "actor" in access
