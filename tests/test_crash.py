"""Crashes under load: server processes killed with SIGKILL at random moments while clients
meter, reserve, commit, release and change allowances; on PostgreSQL the database is also
stopped at once (`pg_ctl stop -m immediate`: no checkpoint, recovery from its WAL), on the
SQLite default the one server process is killed mid-write. Killed processes are started
again on the same port, forked from a process that imported the server's code once and made
its app beforehand (tests.servers.PreloadedServer): a restart costs uvicorn's start, not
Python's start, the imports and create_app, which were nearly all of it. Clients send every
request whose answer they did not get again with the same Idempotency-Key, as the API asks.

Afterwards: every acknowledged request is still there (each is sent once more and must come
back as the same answer, replayed), none was applied twice (one fresh answer per key; every
accepted request has its own journal entry and the balances are exactly the sum of the
accepted answers), every rule holds and `verify` is clean. No answer is a 5xx other than
503 `unavailable`.

PostgreSQL here is a private cluster of the test's own (tests.servers.PrivatePostgres), so
crashing it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import (
    WHOLE_MACHINE,
    PrivatePostgres,
    Server,
    postgres_bin,
    started_servers,
)
from tests.traffic import Answer, Ledger, Run, check_ledger, create_organization, operator_key
from tokenadmin.database import Database
from tokenadmin.migrate import upgrade

pytestmark = [pytest.mark.slow, WHOLE_MACHINE]

REQUIRE_POSTGRES = os.environ.get("TOKENADMIN_REQUIRE_POSTGRES") == "1"
SEED = int(os.environ.get("TOKENADMIN_CRASH_SEED", "20261127"))
KILLS = 24  # at least 20 on each database
USERS = 20
CAPACITY = 20 * 200_000 + 1_000_000
TRAIN_CAPACITY = 20 * 40_000 + 200_000
DEBIT_SIZES = (1, 7, 50, 100, 250, 999, 5_000)
WORKERS = 24
MIN_SENT = 1_000  # requests of the clients' work, setup aside


@dataclass
class Faults:
    """What was done to the service, to report and to check."""

    kills: int = 0
    kills_mid_request: int = 0  # the process had requests in flight when it died
    database_crashes: int = 0
    restarts: list[float] = field(default_factory=list)  # seconds until it answered again
    unavailable: int = 0  # answers 503 unavailable (the database out of reach), sent again


async def _crash_run(
    db: Database,
    servers: list[Server],
    *,
    crash_database: Callable[[], Awaitable[None]] | None,
) -> tuple[Faults, Counter[tuple[int, str, bool]], int]:
    """Clients work while servers are killed (and the database crashed once); returns the
    faults injected, the answers' outcomes and how many requests were sent."""
    rng = random.Random(SEED)
    operator = await operator_key(db)
    ledger = Ledger()
    faults = Faults()
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        run = Run(http, [server.url for server in servers])
        org, admin, meters, users = await create_organization(
            run, operator, users=USERS, capacity=CAPACITY, train_capacity=TRAIN_CAPACITY
        )
        setup = run.sent
        requests: dict[str, tuple[str, str, str, Any]] = {}  # by key, to send again
        answered: list[str] = []  # keys answered, to replay now and then
        stopping = asyncio.Event()
        enough = asyncio.Event()  # the clients have sent MIN_SENT requests

        async def send(secret: str, method: str, path: str, body: Any, key: str) -> Answer:
            requests[key] = (secret, method, path, body)
            answer = await run.send(secret, method, path, body, key=key)
            ledger.note(key, answer)
            answered.append(key)
            if run.sent - setup >= MIN_SENT:
                enough.set()
            return answer

        async def debit() -> None:
            kind = "inference" if rng.random() < 0.8 else "training"
            size = 60_000 if rng.random() < 0.02 else rng.choice(DEBIT_SIZES)
            body = {"user": rng.choice(users), "kind": kind, "tokens": size}
            answer = await send(rng.choice(meters), "POST", "/v1/usage", body, uuid.uuid4().hex)
            assert answer.status in (200, 402), answer

        async def reservation() -> None:
            tokens = rng.choice(DEBIT_SIZES)
            body = {"user": rng.choice(users), "kind": "inference", "tokens": tokens}
            meter = rng.choice(meters)
            opened = await send(meter, "POST", "/v1/reservations", body, uuid.uuid4().hex)
            assert opened.status in (201, 402), opened
            if opened.status != 201:
                return
            action = rng.choice(["commit", "commit", "release"])
            close = None if action == "release" else {"tokens": rng.randint(0, tokens)}
            path = f"/v1/reservations/{opened.body['id']}/{action}"
            closed = await send(meter, "POST", path, close, uuid.uuid4().hex)
            assert closed.status == 200, closed

        async def change() -> None:
            rows = [
                {"user": user, "max_tokens": rng.choice([150_000, 200_000, 250_000])}
                for user in rng.sample(users, rng.randint(1, 3))
            ]
            path = f"/v1/organizations/{org}/allowances"
            body = {"changes": rows, "reason": "crash test"}
            answer = await send(admin, "POST", path, body, uuid.uuid4().hex)
            assert answer.status in (200, 422), answer

        async def replay() -> None:
            if answered:
                key = rng.choice(answered)
                await send(*requests[key], key)

        async def worker() -> None:
            while not stopping.is_set():
                draw = rng.random()
                if draw < 0.7:
                    await debit()
                elif draw < 0.85:
                    await reservation()
                elif draw < 0.9:
                    await change()
                else:
                    await replay()

        async def chaos() -> None:
            """Kill a random process at a random moment whenever all are up (the others
            carry the load meanwhile); crash the database once, half way."""
            await asyncio.sleep(1.0)  # the load first reaches its pace
            for round_ in range(KILLS + (crash_database is not None)):
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                if round_ == KILLS // 2 and crash_database is not None:
                    await crash_database()
                    faults.database_crashes += 1
                    continue
                target = rng.choice(servers)
                if run.pending[target.url] > 0:
                    faults.kills_mid_request += 1
                target.kill()
                faults.kills += 1
                started = time.monotonic()
                target.start()
                await asyncio.to_thread(target.wait_ready, 60)
                faults.restarts.append(time.monotonic() - started)
            # Work goes on against the restarted processes, at least until the run has sent
            # its share of requests, however quickly the processes came back.
            await asyncio.sleep(0.5)
            async with asyncio.timeout(120):
                await enough.wait()
            stopping.set()

        started = time.monotonic()
        await asyncio.gather(chaos(), *(worker() for _ in range(WORKERS)))
        elapsed = time.monotonic() - started
        sent = run.sent - setup
        faults.unavailable = run.retried["unavailable"]

        # Every acknowledged request is still there: sent once more, it answers the same.
        # Each whose answer was lost or refused for a while (sent more than once), and as
        # many others drawn at random.
        resent = [key for key, answers in ledger.by_key.items() if answers[0].attempts > 1]
        others = sorted(set(ledger.by_key) - set(resent))
        again = resent + rng.sample(others, min(len(others), max(len(resent), 500)))
        gate = asyncio.Semaphore(20)

        async def once_more(key: str) -> None:
            async with gate:
                answer = await run.send(*requests[key], key=key)
            assert answer.replayed, (key, answer)
            ledger.note(key, answer)

        await asyncio.gather(*(once_more(key) for key in again))
        assert not run.faults, run.faults
        for server in servers:
            assert (await http.get(f"{server.url}/healthz")).status_code == 200

    outcomes = await check_ledger(db, org, ledger, users)
    print(
        f"\n{sent} requests in {elapsed:.1f} s; {faults.kills} kills"
        f" ({faults.kills_mid_request} with requests in flight), {faults.database_crashes}"
        f" database crashes; restarts took {min(faults.restarts):.1f}–"
        f"{max(faults.restarts):.1f} s; {len(again)} keys replayed after ({len(resent)}"
        " of them sent more than once);"
        f" resent after a lost answer: {dict(run.retried)}"
        f"\noutcomes (status, code, replayed): {dict(sorted(outcomes.items()))}"
    )
    return faults, outcomes, sent


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    bindir = postgres_bin()
    if bindir is None:
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL's server programs (pg_ctl, initdb) are not installed")
        pytest.skip("PostgreSQL's server programs (pg_ctl, initdb) are not installed")
    cluster = PrivatePostgres(bindir)
    try:
        await asyncio.to_thread(cluster.create)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.remove)


async def test_kill_9_servers_and_crash_postgresql_under_load_loses_and_doubles_nothing(
    private_postgres: PrivatePostgres,
) -> None:
    async def crash_database() -> None:
        await asyncio.to_thread(private_postgres.crash)
        await asyncio.sleep(1.0)  # requests meanwhile answer 503 or fail to connect
        await asyncio.to_thread(private_postgres.start)

    faults = await _crash_test(
        private_postgres.url,
        3,
        log=private_postgres.directory / "servers.log",
        crash_database=crash_database,
    )
    assert faults.database_crashes == 1
    assert faults.unavailable > 0  # requests met the database down, and were sent again


async def test_kill_9_the_sqlite_server_mid_write_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    await _crash_test(url, 1, log=tmp_path / "servers.log", crash_database=None)
    with sqlite3.connect(tmp_path / "crash.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def _crash_test(
    url: str,
    processes: int,
    *,
    log: Path,
    crash_database: Callable[[], Awaitable[None]] | None,
) -> Faults:
    """Migrate, start `processes` servers and crash them under load; check what followed.
    The servers' output (a warning a request while the database is down) goes to `log`;
    its tail is shown when something went wrong."""
    upgrade(url)
    db = Database(url, pool_size=2)
    try:
        with started_servers(url, processes, log=log, preloaded=True) as servers:
            faults, outcomes, sent = await _crash_run(db, servers, crash_database=crash_database)
    except BaseException:
        print(_tail(log))
        raise
    finally:
        await db.dispose()
    assert faults.kills >= 20
    assert faults.kills_mid_request >= faults.kills // 2, faults
    assert sent >= MIN_SENT
    for outcome in ((200, "ok", False), (201, "ok", False), (200, "ok", True)):
        assert outcomes[outcome] > 0, (outcome, outcomes)
    return faults


def _tail(log: Path, count: int = 40) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return "\n".join(["servers' output, last lines:", *lines[-count:]])
