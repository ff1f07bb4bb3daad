"""Where the time of a metering request goes: the server under load, measured from outside
and sampled from inside, on each database; prints a markdown section for bench/PROFILE.md.

    .venv/bin/python -m bench.profile [--databases postgresql,sqlite] [--seconds 10]
                                      [--scenarios spread,batch] [--users 10000]
                                      [--output FILE]

For each database it seeds a throwaway one as `make bench` does (bench/data.py: 10,000
users of one organization, a `usage` key), starts the server as `make bench` does
(`uvicorn --workers 2` on PostgreSQL, one process on SQLite), warms it up, and for each
scenario ("spread": POST /v1/usage for a random user, bench/usage.lua, 64 connections;
"batch": POST /v1/usage/batch of 1,000 events, bench/batch.lua, 8 connections; "hot", on
request: every request for one user, 64 connections) runs wrk twice:

1. unprofiled: the CPU time of each party over the run, read from /proc (the server's
   processes; the PostgreSQL backends serving the throwaway database, found by its name
   in their titles; wrk; the rest of the machine; idle), per request;
2. sampled: `py-spy record --nonblocking -f raw --subprocesses` of the server's processes
   (CPU-active samples only; nonblocking, so the server is never paused), while wrk runs
   the same load. Each sample is put in a layer by its innermost frame (uvicorn, the
   fast path, the engine, the driver, the event loop…) and under the innermost tokenadmin
   function on its stack; shares of the samples, turned into CPU ms per request with the
   server's CPU time of that run.

py-spy is in the `dev` extra; without it only part 1 is printed. Everything is on
loopback, bounded in time, and cleaned up; nothing is written but --output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.data import Seeded, seed_metering
from bench.load import Plan, _descendants, wrk
from bench.usage import TOKENS, wrk_env
from bench.user_table import _state_of_the_code, _throwaway_database, server
from tokenadmin.migrate import upgrade

TICK = os.sysconf("SC_CLK_TCK")
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    script: str
    connections: int
    unit: str  # one request
    units: str
    per_request: int  # operations (events) per request
    prefix: str = "user"  # the seeded users it meters (bench/data.py)
    users: int | None = None  # None: every seeded user


SCENARIOS = {
    "spread": Scenario(
        "spread",
        "POST /v1/usage, a random one of the users",
        "usage.lua",
        64,
        "request",
        "requests",
        1,
    ),
    "batch": Scenario(
        "batch", "POST /v1/usage/batch, 1,000 events", "batch.lua", 8, "batch", "batches", 1_000
    ),
    "hot": Scenario(
        "hot",
        "POST /v1/usage, every request for one user",
        "usage.lua",
        64,
        "request",
        "requests",
        1,
        prefix="hot",
        users=1,
    ),
}


# --- CPU time, from /proc ----------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (all threads)


def _postgres_backends(database: str) -> list[int]:
    """The PostgreSQL server processes serving `database` (their title names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {database} " in title:
            found.append(int(entry.name))
    return found


def _machine() -> tuple[float, float]:
    """All CPUs' busy and idle seconds since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICK, idle / TICK


@dataclass(frozen=True)
class Snapshot:
    server: dict[int, float]
    postgres: dict[int, float]
    children: float  # this process's reaped children (wrk, py-spy)
    busy: float
    idle: float


def snapshot(server_pid: int, database: str | None) -> Snapshot:
    times = os.times()
    busy, idle = _machine()
    return Snapshot(
        {pid: _cpu_seconds(pid) for pid in _descendants(server_pid)},
        {pid: _cpu_seconds(pid) for pid in _postgres_backends(database)} if database else {},
        times.children_user + times.children_system,
        busy,
        idle,
    )


def _grown(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


@dataclass(frozen=True)
class Spent:
    """CPU seconds each party spent over one run."""

    server: float
    postgres: float
    client: float
    other: float
    idle: float

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Spent:
        server = _grown(before.server, after.server)
        postgres = _grown(before.postgres, after.postgres)
        client = after.children - before.children
        busy = after.busy - before.busy
        return cls(
            server,
            postgres,
            client,
            max(0.0, busy - server - postgres - client),
            after.idle - before.idle,
        )


# --- py-spy -------------------------------------------------------------------------------


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def sampling(pid: int, seconds: float, output: Path) -> Iterator[None]:
    """py-spy sampling the server `pid` and its workers for `seconds` (if installed)."""
    program = py_spy()
    if program is None:
        yield
        return
    command = [
        program, "record", "--nonblocking", "--subprocesses", "-f", "raw", "-r", "100",
        "-d", str(max(1, int(seconds))), "-o", str(output), "-p", str(pid),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        try:
            process.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _frames(stack: str) -> list[tuple[str, str]]:
    """(function, file) of each frame, outermost first; py-spy's process frame left out."""
    frames = []
    for part in stack.split(";"):
        match = FRAME.match(part)
        if match is None:  # "process 123:"…"" roots, thread names
            continue
        frames.append((match["function"], match["file"]))
    return frames


LAYERS = (  # (a path fragment of the innermost frame's file, its layer), first match wins
    ("tokenadmin/usage/fast", "tokenadmin: fast HTTP path"),
    ("tokenadmin/usage/endpoints", "tokenadmin: routes and schemas"),
    ("tokenadmin/usage/schemas", "tokenadmin: routes and schemas"),
    ("tokenadmin/deps", "tokenadmin: routes and schemas"),
    ("tokenadmin/auth/", "tokenadmin: authentication"),
    ("tokenadmin/usage/", "tokenadmin: metering engine"),
    ("tokenadmin/idempotency/", "tokenadmin: idempotency"),
    ("tokenadmin/journal/", "tokenadmin: journal and hash chain"),
    ("tokenadmin/database", "tokenadmin: database and transactions"),
    ("tokenadmin/rows", "tokenadmin: database and transactions"),
    ("tokenadmin/", "tokenadmin: other"),
    ("uvicorn/", "uvicorn (HTTP server)"),
    ("httptools", "uvicorn (HTTP server)"),
    ("h11/", "uvicorn (HTTP server)"),
    ("starlette/", "Starlette / FastAPI"),
    ("fastapi/", "Starlette / FastAPI"),
    ("pydantic", "pydantic"),
    ("msgspec", "msgspec"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("asyncpg/", "asyncpg (driver)"),
    ("aiosqlite/", "aiosqlite / sqlite3 (driver)"),
    ("sqlite3/", "aiosqlite / sqlite3 (driver)"),
    ("asyncio/", "event loop (asyncio, uvloop)"),
    ("uvloop/", "event loop (asyncio, uvloop)"),
    ("selectors", "event loop (asyncio, uvloop)"),
    ("json/", "json"),
    ("hashlib", "hashing"),
    ("logging/", "logging"),
    ("prometheus_client/", "metrics"),
    ("threading", "threads"),
    ("concurrent/", "threads"),
)


def layer(file: str) -> str:
    for fragment, name in LAYERS:
        if fragment in file:
            return name
    top = file.split("site-packages/", 1)[-1].split("/", 1)[0]
    return f"other ({top})"


def _short(file: str) -> str:
    return "tokenadmin/" + file.split("tokenadmin/", 1)[1] if "tokenadmin/" in file else file


@dataclass(frozen=True)
class Samples:
    total: int
    layers: Counter[str]
    functions: Counter[str]  # the innermost tokenadmin function of each sample
    processes: int


def read_samples(raw: Path) -> Samples | None:
    """py-spy's raw output (one "stack count" line per distinct stack) in layers and
    tokenadmin functions."""
    if not raw.exists():
        return None
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    processes: set[str] = set()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # --subprocesses: the supervisor's "process <pid>:…" frame, then the worker's.
        if pids := re.findall(r"(?:^|;)process (\d+):", stack):
            processes.add(pids[-1])
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        layers[layer(frames[-1][1])] += count
        ours = [(f, path) for f, path in frames if "tokenadmin/" in path]
        where = (
            f"{ours[-1][0]} ({_short(ours[-1][1])})"
            if ours
            else "(no tokenadmin frame: the event loop, uvicorn, driver callbacks)"
        )
        functions[where] += count
    return Samples(total, layers, functions, len(processes))


# --- one run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    spent: Spent

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def ms(self, cpu_seconds: float) -> float:
        return cpu_seconds * 1000 / self.requests if self.requests else 0.0


def load(
    base: str, seeded: Seeded, plan: Plan, scenario: Scenario, pid: int, database: str | None
) -> Run:
    users = scenario.users or plan.users
    env = {**wrk_env(seeded, scenario.prefix, users, TOKENS), "BENCH_EVENTS": "1000"}
    before = snapshot(pid, database)
    figures: dict[str, Any] = wrk(
        base,
        scenario.script,
        env,
        seconds=plan.seconds,
        timeout=plan.timeout,
        threads=plan.threads,
        connections=scenario.connections,
    )
    after = snapshot(pid, database)
    answered = figures.get("batches", figures.get("accepted", 0) + figures.get("refused", 0))
    return Run(
        int(answered),
        float(figures["seconds"]),
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        Spent.between(before, after),
    )


# --- the section --------------------------------------------------------------------------


def _cpu_table(run: Run, workers: int, database: str, scenario: Scenario) -> list[str]:
    spent = run.spent
    total = spent.server + spent.postgres + spent.client + spent.other + spent.idle
    rows = [
        (f"tokenadmin server ({workers} process{'es' if workers > 1 else ''})", spent.server),
        ("PostgreSQL backends of this database", spent.postgres),
        ("wrk (the client)", spent.client),
        ("everything else on the machine", spent.other),
        ("idle", spent.idle),
    ]
    if database == "sqlite":
        rows.pop(1)
    lines = [
        f"| where | CPU s | ms per {scenario.unit} | share of the machine |",
        "|---|---:|---:|---:|",
    ]
    for name, seconds in rows:
        share = seconds / total if total else 0.0
        lines.append(f"| {name} | {seconds:.2f} | {run.ms(seconds):.3f} | {share:.0%} |")
    return lines


def _samples_tables(samples: Samples, run: Run, scenario: Scenario) -> list[str]:
    server_ms = run.ms(run.spent.server)
    lines = [
        f"Server CPU by layer (innermost frame of {samples.total:,} CPU-active samples"
        f" of {samples.processes} processes):",
        "",
        f"| layer | share | CPU ms per {scenario.unit} |",
        "|---|---:|---:|",
    ]
    for name, count in samples.layers.most_common():
        share = count / samples.total
        if share < 0.005:
            continue
        lines.append(f"| {name} | {share:.1%} | {share * server_ms:.3f} |")
    lines += [
        "",
        "Under which tokenadmin function (the innermost one on the stack, with the library"
        " code it called):",
        "",
        f"| function | share | CPU ms per {scenario.unit} |",
        "|---|---:|---:|",
    ]
    for name, count in samples.functions.most_common(15):
        share = count / samples.total
        lines.append(f"| `{name}` | {share:.1%} | {share * server_ms:.3f} |")
    return lines


def section(
    database: str,
    scenario: Scenario,
    workers: int,
    plain: Run,
    sampled: Run,
    samples: Samples | None,
) -> list[str]:
    per_event = ""
    if scenario.per_request > 1:
        per_event = f" ({plain.per_second * scenario.per_request:,.0f} events/s)"
    lines = [
        f"### {database}: {scenario.name} ({scenario.what}; {scenario.connections}"
        f" connections, {workers} server process{'es' if workers > 1 else ''})",
        "",
        f"Unprofiled: {plain.per_second:,.1f} {scenario.units}/s{per_event}, p50"
        f" {plain.p50_ms:.1f} ms, p99 {plain.p99_ms:.1f} ms. Under py-spy:"
        f" {sampled.per_second:,.1f} {scenario.units}/s.",
        "",
        "CPU time over the unprofiled run (/proc; the machine's capacity is its cores × the"
        " run's time):",
        "",
        *_cpu_table(plain, workers, database, scenario),
        "",
    ]
    if samples is None or not samples.total:
        lines += ["(py-spy not installed or no samples: `pip install -e '.[dev]'`)", ""]
    else:
        lines += [*_samples_tables(samples, sampled, scenario), ""]
    return lines


def profile_database(
    database: str,
    plan: Plan,
    scenarios: list[Scenario],
    postgres_admin_url: str,
    keep: Path | None = None,
) -> list[str]:
    workers = plan.postgres_workers if database == "postgresql" else 1
    lines: list[str] = []
    with (
        _throwaway_database(database, postgres_admin_url) as url,
        tempfile.TemporaryDirectory(prefix="tokenadmin-profile-") as scratch,
    ):
        upgrade(url)
        seeded = seed_metering(url, plan.users)
        name = urlsplit(url).path.lstrip("/") if database == "postgresql" else None
        with server(url, workers) as (base, pid):
            warm = replace(plan, seconds=plan.warmup)
            load(base, seeded, warm, SCENARIOS["spread"], pid, name)
            for scenario in scenarios:
                print(f"{database}: {scenario.name}", file=sys.stderr, flush=True)
                plain = load(base, seeded, plan, scenario, pid, name)
                raw = Path(scratch) / f"{scenario.name}.txt"
                with sampling(pid, plan.seconds, raw):
                    sampled = load(base, seeded, plan, scenario, pid, name)
                lines += section(database, scenario, workers, plain, sampled, read_samples(raw))
                if keep is not None and raw.exists():
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(raw, keep / f"{database}-{scenario.name}.txt")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--scenarios", default="spread,batch")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=None, help="Also write the section here.")
    parser.add_argument(
        "--samples", type=Path, default=None, help="Keep py-spy's raw stacks in this folder."
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    options = parser.parse_args()
    databases = options.databases.split(",")
    if unknown := set(databases) - {"postgresql", "sqlite"}:
        parser.error(f"unknown databases {sorted(unknown)}")
    if unknown := set(options.scenarios.split(",")) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}")
    if shutil.which("wrk") is None:
        parser.error("needs wrk (apt-get install wrk)")
    if not 1 <= options.seconds <= 120:
        parser.error("--seconds is 1 to 120")
    scenarios = [SCENARIOS[name] for name in options.scenarios.split(",")]
    plan = Plan(users=options.users, seconds=options.seconds, warmup=2.0)
    load_at_start = os.getloadavg()[0]
    body: list[str] = []
    for database in databases:
        body += profile_database(database, plan, scenarios, options.postgres_url, options.samples)
    lines = [
        f"## Where a metering request's time goes: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,"
        f" commit {_state_of_the_code()}, {os.cpu_count() or 0} cores",
        "",
        "`python -m bench.profile` (bench/profile.py): the server as `make bench` runs it,"
        f" {plan.users:,} seeded users, wrk and the Lua scripts of bench/ for"
        f" {plan.seconds:g} s per run, 1 token per request or event; CPU time from /proc,"
        " then py-spy (`record --nonblocking --subprocesses -f raw`, CPU-active samples) on"
        f" a second run of the same load. Load average (1 min) at the start"
        f" {load_at_start:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "",
        *body,
    ]
    text = "\n".join(lines)
    print(text)
    if options.output is not None:
        options.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
