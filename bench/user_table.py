"""Benchmark: the dashboard's user table of an organization with 100,000 users.

    .venv/bin/python -m bench.user_table [--databases sqlite,postgresql] [--users 100000]
                                         [--requests 200] [--no-record]

For each database it makes a throwaway one (a SQLite file in a temporary directory; a
PostgreSQL database it creates and drops), seeds one organization with `bulk.seed_users`,
starts a real server process on loopback, signs in as the organization's admin and times
GET /orgs/{id} for each scenario: `--requests` requests after a warm-up, one at a time.
The figures are client round trips on loopback, an upper bound of the server's time.
The target is a p95 under 50 ms. Results are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.bulk import seed_users
from tokenadmin.database import Database
from tokenadmin.migrate import upgrade
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service
from tokenadmin.user.repository import UserQuery

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
TARGET_P95_MS = 50.0
PAGE_SIZE = 50  # as the dashboard's
ADMIN_EMAIL = "bench-admin@bench.example"
ADMIN_PASSWORD = "bench-password"
SCENARIOS = {
    "first page": {},
    "search, few matches (q=012345)": {"q": "012345"},
    "search, a surname (q=tanaka, ~5,900 matches)": {"q": "tanaka"},
    "sort by Max Tokens, desc": {"sort": "max_tokens", "order": "desc"},
    "deep page (page 1801, offset 90,000)": {"page": "1801"},
}
MAIN_SCENARIOS = ("first page", "search, few matches (q=012345)", "sort by Max Tokens, desc")


@dataclass
class Figures:
    scenario: str
    p50: float
    p95: float
    p99: float
    worst: float


@dataclass
class Run:
    round_trips: list[Figures]
    queries: list[Figures]
    seed_seconds: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _throwaway_database(kind: str, postgres_admin_url: str) -> Iterator[str]:
    if kind == "sqlite":
        directory = tempfile.mkdtemp(prefix="tokenadmin-bench-")
        try:
            yield f"sqlite:///{directory}/bench.db"
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return
    name = f"tokenadmin_bench_{uuid.uuid4().hex[:10]}"
    admin = postgres_admin_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(admin, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _seed(url: str, users: int) -> tuple[uuid.UUID, float]:
    db = Database(url, pool_size=2)
    act = Act("bench", datetime.now(UTC))
    try:

        async def organization(session: AsyncSession) -> uuid.UUID:
            org = await organization_service.create(session, act, name="Bench Corp")
            await organization_service.record_purchase(
                session,
                act,
                org,
                inference_amount=(users + 1) * 1_000_000,
                training_amount=0,
                purchased_on=None,
                expires_at=None,
                payer="bench",
                note="capacity for the benchmark",
            )
            admin = user_service.NewUser(
                email=ADMIN_EMAIL, name="Bench Admin", role="admin", password=ADMIN_PASSWORD
            )
            await user_service.create(session, act, org, admin)
            return org.id

        org_id = await db.write(organization)
        started = time.perf_counter()
        # Varied allowances, so sorting by Max Tokens has something to sort.
        batches = (200_000, 250_000, 500_000, 1_000_000)
        for index, max_tokens in enumerate(batches):
            share = users // len(batches) + (1 if index < users % len(batches) else 0)
            await seed_users(db, org_id, share, max_tokens=max_tokens, act=act)
        return org_id, time.perf_counter() - started
    finally:
        await db.dispose()


@contextmanager
def server(url: str, workers: int, timeout: float = 60) -> Iterator[tuple[str, int]]:
    """A real server on loopback (`workers` processes); yields its URL and its pid."""
    port = _free_port()
    env = {**os.environ, "TOKENADMIN_DATABASE_URL": url, "TOKENADMIN_LOG_LEVEL": "warning"}
    command = [
        sys.executable, "-m", "uvicorn", "tokenadmin.app:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--workers", str(workers),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start in {timeout} s")
            time.sleep(0.1)
        if workers > 1:
            # /healthz answered by one worker; give the others their start-up too.
            time.sleep(1.0)
        yield base, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _sign_in(http: httpx.Client) -> None:
    http.get("/login").raise_for_status()
    form = {
        "email": ADMIN_EMAIL,
        "password": ADMIN_PASSWORD,
        "csrf_token": http.cookies["ta_login_csrf"],
    }
    answer = http.post("/login", data=form)
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in failed: {answer.status_code} {answer.text[:200]}")


def _percentile(ordered: list[float], share: float) -> float:
    index = min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))
    return ordered[index]


def _measure(
    http: httpx.Client, path: str, params: dict[str, str], requests: int, warmup: int
) -> list[float]:
    timings = []
    for attempt in range(warmup + requests):
        started = time.perf_counter()
        answer = http.get(path, params=params)
        elapsed = (time.perf_counter() - started) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: {answer.status_code}")
        if attempt >= warmup:
            timings.append(elapsed)
    return sorted(timings)


def _query(org_id: uuid.UUID, period_start: datetime, params: dict[str, str]) -> UserQuery:
    page = int(params.get("page", "1"))
    return UserQuery(
        org_id=org_id,
        period_start=period_start,
        search=params.get("q"),
        sort=params.get("sort", "name"),
        descending=params.get("order") == "desc",
        limit=PAGE_SIZE,
        offset=(page - 1) * PAGE_SIZE,
    )


async def _query_times(
    url: str, org_id: uuid.UUID, requests: int, warmup: int
) -> dict[str, list[float]]:
    """The user table's queries alone (`user.repository.search`), in this process."""
    db = Database(url, pool_size=2)
    try:

        async def work(session: AsyncSession) -> dict[str, list[float]]:
            org = await organization_service.get(session, org_id)
            start = current_period(org, datetime.now(UTC))
            timings: dict[str, list[float]] = {}
            for scenario, params in SCENARIOS.items():
                query = _query(org_id, start, params)
                found = []
                for attempt in range(warmup + requests):
                    started = time.perf_counter()
                    await user_repository.search(session, query)
                    if attempt >= warmup:
                        found.append((time.perf_counter() - started) * 1000)
                timings[scenario] = sorted(found)
            return timings

        return await db.read(work)
    finally:
        await db.dispose()


def _figures(scenario: str, timings: list[float]) -> Figures:
    return Figures(
        scenario,
        statistics.median(timings),
        _percentile(timings, 0.95),
        _percentile(timings, 0.99),
        timings[-1],
    )


def run_database(kind: str, users: int, requests: int, warmup: int, postgres_admin_url: str) -> Run:
    with _throwaway_database(kind, postgres_admin_url) as url:
        upgrade(url)
        org_id, seconds = asyncio.run(_seed(url, users))
        print(f"{kind}: seeded {users:,} users in {seconds:.1f} s", flush=True)
        queries = asyncio.run(_query_times(url, org_id, requests, warmup))
        query_figures = [_figures(scenario, timings) for scenario, timings in queries.items()]
        for found in query_figures:
            print(f"  query only: {_line(found)}", flush=True)
        figures = []
        with server(url, 1) as (base, _pid), httpx.Client(base_url=base, timeout=30) as http:
            _sign_in(http)
            first = http.get(f"/orgs/{org_id}")
            if not re.search(rf"{users + 1:,}|{users + 1}", first.text):
                raise RuntimeError("the user table does not show every user")
            for scenario, params in SCENARIOS.items():
                timings = _measure(http, f"/orgs/{org_id}", params, requests, warmup)
                found = _figures(scenario, timings)
                figures.append(found)
                print(f"  round trip: {_line(found)}", flush=True)
        return Run(figures, query_figures, seconds)


def _line(found: Figures) -> str:
    return (
        f"{found.scenario:45} p50 {found.p50:6.1f}  p95 {found.p95:6.1f}"
        f"  p99 {found.p99:6.1f}  max {found.worst:6.1f} ms"
    )


def _state_of_the_code() -> str:
    """The commit measured, and whether the code differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "tokenadmin", "migrations"],
            capture_output=True,
            text=True,
            check=True,
            cwd=HERE.parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (with uncommitted changes)" if changed else commit


def _table(rows: list[tuple[str, Figures]], meets_target: bool) -> list[str]:
    lines = [
        "| database | scenario | p50 | p95 | p99 | max |"
        + (" p95 < target |" if meets_target else "")
    ]
    lines.append("|---|---|---:|---:|---:|---:|" + ("---|" if meets_target else ""))
    for kind, f in rows:
        line = (
            f"| {kind} | {f.scenario} | {f.p50:.1f} | {f.p95:.1f} | {f.p99:.1f} | {f.worst:.1f} |"
        )
        if meets_target:
            line += " yes |" if f.p95 < TARGET_P95_MS else " **no** |"
        lines.append(line)
    return lines


def _record(
    results: dict[str, Run], users: int, requests: int, code: str, load: tuple[float, float]
) -> None:
    cores = os.cpu_count() or 0
    lines = [
        "",
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {code}, {cores} cores",
        "",
        f"{users:,} users in one organization; {requests} sequential requests per scenario"
        f" after a warm-up. Target: p95 under {TARGET_P95_MS:.0f} ms. Load average (1 min)"
        f" at the start {load[0]:.1f}, at the end {load[1]:.1f}: other work on the machine"
        " inflates the figures.",
        "",
        "GET /orgs/{id}, client round trips on loopback (ms; an upper bound of the server's"
        " time: the whole page, with the session, the balance and the template):",
        "",
        *_table([(kind, f) for kind, run in results.items() for f in run.round_trips], True),
        "",
        "The user table's queries alone (`user.repository.search`: the page and its count),"
        " in process (ms):",
        "",
        *_table([(kind, f) for kind, run in results.items() for f in run.queries], False),
        "",
        "Seeding the users with `bulk.seed_users`: "
        + ", ".join(f"{kind} {run.seed_seconds:.1f} s" for kind, run in results.items())
        + ".",
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by `.venv/bin/python -m bench.user_table`.\n"
        )
    with RESULTS.open("a") as results_file:
        results_file.write("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.user_table", description=__doc__)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A PostgreSQL server where a throwaway database may be created.",
    )
    parser.add_argument("--no-record", action="store_true", help="Don't append to RESULTS.md.")
    options = parser.parse_args()
    if not 1 <= options.users <= 1_000_000 or not 1 <= options.requests <= 10_000:
        parser.error("--users is 1 to 1,000,000 and --requests 1 to 10,000")
    code = _state_of_the_code()
    load_at_start = os.getloadavg()[0]
    results = {}
    for kind in options.databases.split(","):
        if kind not in ("sqlite", "postgresql"):
            parser.error(f"unknown database {kind!r}")
        results[kind] = run_database(
            kind, options.users, options.requests, options.warmup, options.postgres_url
        )
    if not options.no_record:
        load = (load_at_start, os.getloadavg()[0])
        _record(results, options.users, options.requests, code, load)
        print(f"Appended to {RESULTS}.")
    failed = [
        f"{kind} {f.scenario}"
        for kind, run in results.items()
        for f in run.round_trips
        if f.scenario in MAIN_SCENARIOS and f.p95 >= TARGET_P95_MS
    ]
    if failed:
        print("p95 over the target: " + "; ".join(failed))


if __name__ == "__main__":
    main()
