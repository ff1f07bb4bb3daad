"""Background jobs run once across processes: several schedulers (each its own Database, as
separate processes have) race for a due job and one runs it; a holder that dies is taken
over when its lease ends; a job overdue for long runs once; and three real servers on one
PostgreSQL with one clock, one of them killed while it holds a job."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.conftest import START
from tests.helpers import Api, funded_org
from tests.servers import Server
from tests.test_bad_inputs import HTML, PASSWORD, sign_in
from tokenadmin import sweeper
from tokenadmin.auth import service as auth_service
from tokenadmin.cli.main import app as cli
from tokenadmin.clock import Clock, FakeClock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.jobs import repository
from tokenadmin.jobs.clock import FileClock
from tokenadmin.jobs.scheduler import JobFunc, Scheduler
from tokenadmin.models import JobLease

MINUTE = timedelta(minutes=1)
LEASE = timedelta(seconds=30)
UPKEEP = (
    "access_tokens.end",
    "idempotency.purge",
    "organizations.maintenance",
    "reservations.expire",
    "sessions.end",
)
SERVER_JOBS = tuple(sorted((*UPKEEP, "events.evaluate", "policies.run", "webhooks.deliver")))
"""The jobs a server runs: the upkeep, and alert evaluation, policy runs, webhook delivery
(email.send only with SMTP configured)."""


@pytest.fixture
async def processes(database_url: str, db: Database) -> AsyncIterator[list[Database]]:
    """Three Database objects on one database, as three server processes hold."""
    others = [Database(database_url, pool_size=2) for _ in range(2)]
    yield [db, *others]
    for other in others:
        await other.dispose()


def counting(runs: list[str], holder: str) -> JobFunc:
    async def job(_db: Database, _clock: Clock) -> None:
        await asyncio.sleep(0.01)  # long enough for the others to try meanwhile
        runs.append(holder)

    return job


async def lease_of(db: Database, name: str) -> JobLease:
    rows = {row.name: row for row in await db.read(repository.list_all)}
    return rows[name]


async def test_of_schedulers_racing_for_a_due_job_one_runs_it_once_per_due_time(
    processes: list[Database], clock: FakeClock
) -> None:
    runs: list[str] = []
    schedulers = []
    for number, database in enumerate(processes):
        scheduler = Scheduler(database, clock, lease=LEASE, holder=f"process-{number}")
        scheduler.register("test.count", 60, counting(runs, scheduler.holder))
        schedulers.append(scheduler)

    ran = []
    for _ in range(3):
        for names in await asyncio.gather(*(s.run_due() for s in schedulers)):
            ran += names
    assert ran == ["test.count"]
    assert len(runs) == 1

    clock.advance(seconds=59)
    await asyncio.gather(*(s.run_due() for s in schedulers))
    assert len(runs) == 1
    clock.advance(seconds=1)
    await asyncio.gather(*(s.run_due() for s in schedulers))
    assert len(runs) == 2

    row = await lease_of(processes[0], "test.count")
    assert row.runs == 2
    assert row.last_ok is True
    assert row.last_error is None
    assert row.lease_until is None
    assert row.holder == runs[-1]
    assert row.next_due_at == clock.now() + MINUTE


async def test_a_job_whose_holder_died_is_taken_over_when_its_lease_ends(
    processes: list[Database], clock: FakeClock
) -> None:
    dead, alive = processes[0], processes[1]
    runs: list[str] = []
    survivor = Scheduler(alive, clock, lease=LEASE, holder="alive")
    survivor.register("test.count", 60, counting(runs, "alive"))
    await alive.write(lambda s: repository.ensure(s, "test.count", clock.now()))
    # The dead process claimed it and never renewed nor released it.
    assert await dead.write(lambda s: repository.claim(s, "test.count", "dead", clock.now(), LEASE))

    assert await survivor.run_due() == []
    clock.advance(seconds=30)
    assert await survivor.run_due() == []  # its lease lasts to this very moment
    clock.advance(seconds=1)
    assert await survivor.run_due() == ["test.count"]
    row = await lease_of(alive, "test.count")
    assert (row.holder, row.runs, row.last_ok) == ("alive", 2, True)

    # Had it only been slow, its late release changes nothing.
    assert not await dead.write(
        lambda s: repository.release(s, "test.count", "dead", clock.now(), clock.now(), None)
    )
    assert (await lease_of(alive, "test.count")).next_due_at == clock.now() + MINUTE


async def test_a_running_job_renews_its_lease_so_no_one_takes_it_over(
    processes: list[Database], clock: FakeClock
) -> None:
    lease = timedelta(seconds=0.3)  # renewed every 0.1 s of real time
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[str] = []

    async def slow(_db: Database, _clock: Clock) -> None:
        runs.append("slow")
        started.set()
        await release.wait()

    first = Scheduler(processes[0], clock, lease=lease, holder="first")
    first.register("test.slow", 60, slow)
    second = Scheduler(processes[1], clock, lease=lease, holder="second")
    second.register("test.slow", 60, slow)
    running = asyncio.create_task(first.run_due())
    await started.wait()
    claimed_until = (await lease_of(processes[0], "test.slow")).lease_until
    assert claimed_until is not None
    clock.advance(seconds=1)  # past the lease it claimed with
    async with asyncio.timeout(60):  # a bound for a hung run, not a measure of speed
        while True:  # the running job renews its lease
            if (await lease_of(processes[0], "test.slow")).lease_until != claimed_until:
                break
            await asyncio.sleep(0.05)
    assert await second.run_due() == []
    release.set()
    assert await running == ["test.slow"]
    assert runs == ["slow"]


async def test_a_server_that_stops_mid_job_hands_it_back_due_at_once(
    processes: list[Database], clock: FakeClock
) -> None:
    started = asyncio.Event()
    runs: list[str] = []

    async def slow(_db: Database, _clock: Clock) -> None:
        runs.append("stopping")
        started.set()
        await asyncio.Event().wait()  # until the server stops

    stopping = Scheduler(processes[0], clock, lease=LEASE, holder="stopping")
    stopping.register("test.slow", 60, slow)
    other = Scheduler(processes[1], clock, lease=LEASE, holder="other")
    other.register("test.slow", 60, counting(runs, "other"))
    serving = asyncio.create_task(stopping.run_forever())
    await started.wait()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving

    row = await lease_of(processes[0], "test.slow")
    assert row.lease_until is None
    assert row.next_due_at == clock.now()
    assert (row.last_ok, row.last_error) == (False, "stopped: the server shut down while it ran")
    assert await other.run_due() == ["test.slow"]  # without waiting for a lease to end
    assert runs == ["stopping", "other"]


async def test_after_downtime_an_overdue_job_runs_once_and_a_failure_is_recorded(
    processes: list[Database], clock: FakeClock
) -> None:
    runs: list[str] = []
    scheduler = Scheduler(processes[0], clock, lease=LEASE, holder="one")
    scheduler.register("test.count", 60, counting(runs, "one"))

    async def failing(_db: Database, _clock: Clock) -> None:
        raise RuntimeError("upstream said no " + "x" * 5000)

    scheduler.register("test.failing", 60, failing)
    assert sorted(await scheduler.run_due()) == ["test.count", "test.failing"]
    clock.advance(days=30)  # 43,200 intervals of downtime
    await scheduler.run_due()
    await scheduler.run_due()
    assert runs == ["one", "one"]

    failed = await lease_of(processes[0], "test.failing")
    assert failed.last_ok is False
    assert failed.runs == 2
    assert failed.last_error is not None
    assert failed.last_error.startswith("RuntimeError: upstream said no")
    assert len(failed.last_error) == repository.ERROR_CHARS
    assert failed.lease_until is None
    assert failed.next_due_at == clock.now() + MINUTE


def test_job_intervals_come_from_settings_each_above_0() -> None:
    settings = Settings(job_intervals={"idempotency.purge": 300}, sweep_interval_seconds=7)
    scheduler = Scheduler(Database("sqlite:///unused.db"), FakeClock(START))
    sweeper.register(scheduler, settings)
    intervals = {name: job.interval.total_seconds() for name, job in scheduler.jobs.items()}
    assert intervals == {**dict.fromkeys(UPKEEP, 7.0), "idempotency.purge": 300.0}
    with pytest.raises(ValidationError, match=r"sessions\.end needs a number of seconds above 0"):
        Settings(job_intervals={"sessions.end": 0})


def test_a_job_is_registered_once_with_an_interval() -> None:
    scheduler = Scheduler(Database("sqlite:///unused.db"), FakeClock(START))
    scheduler.register("test.once", 1, counting([], "x"))
    with pytest.raises(ValueError, match="registered twice"):
        scheduler.register("test.once", 1, counting([], "x"))
    with pytest.raises(ValueError, match="above 0"):
        scheduler.register("test.never", 0, counting([], "x"))


async def test_operators_read_each_jobs_last_run_lag_and_holder_others_are_refused(
    app: FastAPI, api: Api, clock: FakeClock
) -> None:
    scheduler: Scheduler = app.state.jobs
    assert sorted(await scheduler.run_due()) == list(SERVER_JOBS)
    clock.advance(seconds=65)  # due 5 s after each run; late by 60 s

    listed = await api.get("/v1/jobs")
    assert [job["name"] for job in listed] == list(SERVER_JOBS)
    job = listed[0]
    assert (job["state"], job["lag_seconds"], job["runs"]) == ("due", 60.0, 1)
    assert (job["interval_seconds"], job["last_ok"], job["last_error"]) == (5.0, True, None)
    assert job["holder"] == scheduler.holder
    assert job["last_finished_at"] == START.isoformat().replace("+00:00", "Z")

    org = await funded_org(api)
    admin = api.as_key(await api.key(org, "admin"))
    refused = await admin.get("/v1/jobs", expect=403)
    assert refused["error"]["code"] == "forbidden"


def test_tokenadmin_jobs_lists_the_jobs_and_a_failure(database_url: str, db: Database) -> None:
    async def history() -> None:
        database = Database(database_url, pool_size=1)
        try:
            scheduler = Scheduler(database, FakeClock(START), holder="host:1:ab")

            async def failing(_db: Database, _clock: Clock) -> None:
                raise RuntimeError("the database said no")

            scheduler.register("sessions.end", 5, failing)
            await scheduler.run_due()
        finally:
            await database.dispose()

    asyncio.run(history())
    tokenadmin = CliRunner()
    listed = json.loads(
        tokenadmin.invoke(cli, ["--database-url", database_url, "jobs", "--json"]).stdout
    )
    assert [(j["name"], j["state"], j["last_ok"], j["holder"]) for j in listed] == [
        ("sessions.end", "due", False, "host:1:ab")
    ]
    assert listed[0]["lag_seconds"] > 0  # the CLI reads the system clock; START is past
    assert listed[0]["last_error"] == "RuntimeError: the database said no"
    shown = tokenadmin.invoke(cli, ["--database-url", database_url, "jobs"])
    assert shown.exit_code == 0
    assert "the database said no" in shown.stdout


async def wait_for_leases(
    db: Database, ready: Callable[[dict[str, JobLease]], bool], seconds: float = 120
) -> dict[str, JobLease]:
    rows: dict[str, JobLease] = {}
    try:
        async with asyncio.timeout(seconds):  # a bound for a hung run, not a measure of speed
            while True:
                rows = {row.name: row for row in await db.read(repository.list_all)}
                if ready(rows):
                    break
                await asyncio.sleep(0.1)
    except TimeoutError:
        pytest.fail(f"jobs never got there: {rows_text(rows)}")
    return rows


def rows_text(rows: dict[str, JobLease]) -> str:
    return "; ".join(
        f"{r.name} runs={r.runs} holder={r.holder} until={r.lease_until}" for r in rows.values()
    )


def settled(runs: int) -> Callable[[dict[str, JobLease]], bool]:
    def ready(rows: dict[str, JobLease]) -> bool:
        return sorted(rows) == list(SERVER_JOBS) and all(
            row.runs >= runs and row.lease_until is None for row in rows.values()
        )

    return ready


async def test_three_servers_run_each_job_once_per_due_time_and_take_over_a_killed_one(
    pg: Database, postgres_url: str, tmp_path: Path
) -> None:
    clock = FileClock(tmp_path / "clock")
    clock.set(START)
    environment = {
        "TOKENADMIN_CLOCK_FILE": str(clock.path),
        "TOKENADMIN_SWEEP_INTERVAL_SECONDS": "60",  # of the file's time
        "TOKENADMIN_JOB_LEASE_SECONDS": "3",  # polled every second of real time
    }
    servers = [Server(postgres_url, environment=environment) for _ in range(3)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()

        rows = await wait_for_leases(pg, settled(1))
        clock.set(START + MINUTE)
        rows = await wait_for_leases(pg, settled(2))
        assert {name: row.runs for name, row in rows.items()} == dict.fromkeys(SERVER_JOBS, 2)
        assert all(row.last_ok for row in rows.values()), rows_text(rows)

        # The server that takes idempotency.purge next gets stuck in it (the table is
        # locked) and is killed there; the lock then goes, as the dead process's would.
        locker = await asyncpg.connect(postgres_url)
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE idempotency_records IN ACCESS EXCLUSIVE MODE")
            clock.set(START + 2 * MINUTE)
            rows = await wait_for_leases(
                pg,
                lambda rows: (
                    rows["idempotency.purge"].runs == 3
                    and rows["idempotency.purge"].lease_until is not None
                    and all(r.runs == 3 and r.lease_until is None for r in others(rows))
                ),
            )
            stuck = rows["idempotency.purge"].holder
            assert stuck is not None
            [killed] = [s for s in servers if s.process and str(s.process.pid) == pid(stuck)]
            killed.kill()
            await transaction.rollback()
        finally:
            await locker.close()

        clock.set(START + 2 * MINUTE + timedelta(seconds=4))  # past the dead one's lease
        rows = await wait_for_leases(pg, taken_over)
        purge = rows["idempotency.purge"]
        assert purge.runs == 4
        assert purge.last_ok is True
        assert purge.holder is not None
        assert pid(purge.holder) != pid(stuck)
        assert all(r.runs == 3 for r in others(rows)), rows_text(rows)  # not due yet
    finally:
        for server in servers:
            server.stop()


def others(rows: dict[str, JobLease]) -> list[JobLease]:
    return [row for name, row in rows.items() if name != "idempotency.purge"]


def taken_over(rows: dict[str, JobLease]) -> bool:
    purge = rows["idempotency.purge"]
    return purge.runs >= 4 and purge.lease_until is None


def pid(holder: str) -> str:
    return holder.split(":")[1]


async def test_the_operators_jobs_page_shows_each_jobs_state_lag_and_last_failure(
    app: FastAPI, api: Api, db: Database, clock: FakeClock
) -> None:
    scheduler: Scheduler = app.state.jobs

    async def failing(_db: Database, _clock: Clock) -> None:
        raise RuntimeError("the mail server said no")

    scheduler.register("test.failing", 5, failing)
    await scheduler.run_due()
    clock.advance(seconds=65)  # each job is due 5 s after its run: late by a minute
    await db.write(
        lambda s: auth_service.create_operator(
            s, email="olga@ops.example", name="Olga", password=PASSWORD, now=clock.now()
        )
    )
    org = await funded_org(api)
    await api.user(org, "ada@example.com", role="admin", password=PASSWORD)
    transport = httpx.ASGITransport(app=app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as operator,
        httpx.AsyncClient(transport=transport, base_url="http://tokenadmin.test") as admin,
    ):
        await sign_in(operator, "olga@ops.example")
        await sign_in(admin, "ada@example.com")
        page = await operator.get("/operator/jobs", headers=HTML)
        assert page.status_code == 200
        rows = dict(re.findall(r'<tr data-job="([^"]+)" data-state="([^"]+)"', page.text))
        assert rows == {name: "due" for name in (*SERVER_JOBS, "test.failing")}
        assert "1 job failed on its last run: test.failing." in page.text
        assert "the mail server said no" in page.text
        assert page.text.count("1 min</td>") == len(rows)  # late by a minute, each

        refused = await admin.get("/operator/jobs", headers=HTML)
        assert refused.status_code == 404
