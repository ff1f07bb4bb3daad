"""Administration at scale, timed on the database bench/growth.py grew (100,000 users,
3,000,000 journal rows and more), through the paths an administrator uses:

- one atomic allowance change of 10,000 users through the API
  (POST /v1/organizations/{org_id}/allowances, an `admin` key; target, issue 14: ≤ 0.5 s);
- CSV export of the 100,000 users (`tokenadmin users export`; the dashboard's export
  streams the same `user.csv_io.export_chunks`);
- creating 100,000 users (`tokenadmin users import` of a CSV file into a new organization:
  the administrator's bulk path, one atomic change, the same `user.csv_io.import_users`
  as the dashboard's import page);
- `tokenadmin verify` over every journal entry (target, issue 14: ≤ 10 s per 1,000,000
  entries), which is also the exactness check of everything the database went through.

Each is a client's wall-clock time: the HTTP round trip, or the command from start to
exit (the Python interpreter's start included, about a second).

On PostgreSQL the users' table is vacuumed first (`VACUUM ANALYZE users`, untimed): the
metering runs before it updated every user's row many times, and this machine's
PostgreSQL runs with autovacuum off, where a production one would have vacuumed the table
meanwhile. On a bloated table the change's UPDATE costs about twice the CPU.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.data import (
    SPREAD_MAX_TOKENS,
    Seeded,
    create_key,
    create_organization,
    tokenadmin_command,
    verify,
)
from bench.figures import append_to_results, heading, yes_no
from tokenadmin.bulk import EMAIL_DOMAIN
from tokenadmin.database import Database

RAISE = 1_000  # tokens added to each changed user's Max Tokens
CAPACITY_ROOM = 100_000 * RAISE  # what the growth organization bought beyond its users
IMPORT_DOMAIN = "import.example"
ALLOWANCE_TARGET_SECONDS = 0.5  # issue 14, 10,000 users
VERIFY_TARGET_SECONDS_PER_MILLION = 10.0  # issue 14


@dataclass(frozen=True)
class Scale:
    """How many: the defaults are the recorded run."""

    changed_users: int = 10_000
    new_users: int = 100_000
    # The import takes half a minute on PostgreSQL and about a minute on SQLite: the full
    # run times it on PostgreSQL only, to stay within its ten minutes.
    import_on: tuple[str, ...] = ("postgresql",)


QUICK = Scale(changed_users=1_000, new_users=5_000, import_on=("postgresql", "sqlite"))


@dataclass(frozen=True)
class Step:
    what: str
    how: str
    seconds: float
    ok: bool  # did what it says (the check in `detail`)
    detail: str
    target_seconds: float | None = None
    entries: int = 0  # verify: the entries it replayed (its target is per 1,000,000)

    @property
    def per_million(self) -> float:
        return self.seconds * 1_000_000 / self.entries if self.entries else 0.0

    @property
    def measured(self) -> float:
        """What the target is about: seconds, or seconds per 1,000,000 entries."""
        return self.per_million if self.entries else self.seconds

    @property
    def met(self) -> bool | None:
        if self.target_seconds is None:
            return None
        return self.measured <= self.target_seconds


@dataclass
class AdminRun:
    database: str
    steps: list[Step]

    @property
    def clean(self) -> bool:
        return all(step.ok for step in self.steps)


def _show(step: Step) -> Step:
    per_million = f" ({step.per_million:.1f} s per million)" if step.entries else ""
    print(
        f"  {step.what:42} {step.seconds:7.2f} s{per_million}"
        f"  {'ok' if step.ok else 'NOT OK'} ({step.detail})",
        flush=True,
    )
    return step


def _command(url: str, *arguments: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `tokenadmin` on the database; how long it took, and its answer."""
    env = {**os.environ, "TOKENADMIN_DATABASE_URL": url}
    started = time.perf_counter()
    answer = subprocess.run(
        [tokenadmin_command(), *arguments], env=env, capture_output=True, text=True, timeout=600
    )
    return time.perf_counter() - started, answer


def change_allowances(seeded: Seeded, base: str, count: int) -> Step:
    """Raise Max Tokens of `count` users in one request, all or nothing."""
    key = create_key(seeded.url, seeded.org_id, ["admin"], name="bench-admin")
    changes = [
        {"user": f"user{index:06d}@{EMAIL_DOMAIN}", "max_tokens": SPREAD_MAX_TOKENS + RAISE}
        for index in range(count)
    ]
    started = time.perf_counter()
    answer = httpx.post(
        f"{base}/v1/organizations/{seeded.org_id}/allowances",
        json={"changes": changes, "reason": "bench: allowance change at scale"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    seconds = time.perf_counter() - started
    body: dict[str, Any] = answer.json() if answer.status_code == 200 else {}
    applied = len(body.get("changes", [])) if body.get("applied") else 0
    return Step(
        f"allowance change of {count:,} users",
        "POST /v1/organizations/{id}/allowances",
        seconds,
        answer.status_code == 200 and applied == count,
        f"HTTP {answer.status_code}, {applied:,} changes applied",
        target_seconds=ALLOWANCE_TARGET_SECONDS,
    )


def export_users(seeded: Seeded, users: int, workdir: Path) -> Step:
    output = workdir / "export.csv"
    seconds, answer = _command(
        seeded.url, "users", "export", "--org", str(seeded.org_id), "--output", str(output)
    )
    rows = len(output.read_text().splitlines()) - 1 if output.exists() else 0
    return Step(
        f"CSV export of {users:,} users",
        "tokenadmin users export",
        seconds,
        answer.returncode == 0 and rows == users,
        f"exit {answer.returncode}, {rows:,} rows",
    )


def import_users(url: str, count: int, workdir: Path) -> Step:
    """Create `count` users of a new organization from a CSV file, in one atomic change."""
    org = create_organization(url, "Bench Import", count * 200_000)
    source = workdir / "import.csv"
    with source.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["email", "name", "role"])
        for index in range(count):
            writer.writerow([f"new{index:06d}@{IMPORT_DOMAIN}", f"New User {index:06d}", "member"])
    seconds, answer = _command(
        url, "users", "import", "--org", str(org.org_id), str(source), "--json"
    )
    try:
        created = len(json.loads(answer.stdout)["new_users"]) if answer.returncode == 0 else 0
    except (ValueError, KeyError):
        created = 0
    problem = "" if answer.returncode == 0 else f": {answer.stderr.strip()[-200:]}"
    return Step(
        f"create {count:,} users",
        "tokenadmin users import (CSV)",
        seconds,
        answer.returncode == 0 and created == count,
        f"exit {answer.returncode}, {created:,} users created{problem}",
    )


def verify_journal(url: str) -> Step:
    started = time.perf_counter()
    clean, summary = verify(url)
    seconds = time.perf_counter() - started
    entries = summary.split(" entries", 1)[0]
    count = int(entries.replace(",", "")) if entries.replace(",", "").isdigit() else 0
    return Step(
        f"verify {entries} journal entries",
        "tokenadmin verify",
        seconds,
        clean,
        ("clean: " if clean else "NOT CLEAN: ") + summary,
        target_seconds=VERIFY_TARGET_SECONDS_PER_MILLION,
        entries=count,
    )


async def _vacuum_users(url: str) -> None:
    """What autovacuum does to a table whose rows were updated many times."""
    db = Database(url, pool_size=1)
    try:
        async with db.engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql("VACUUM ANALYZE users")
    finally:
        await db.dispose()


def run(
    database: str, seeded: Seeded, base: str, users: int, scale: Scale, workdir: Path
) -> AdminRun:
    """Every administration step, on the organization `seeded` with `users` users and a
    server at `base`; verify last, over everything."""
    print(f"{database}: administration at scale", flush=True)
    if database == "postgresql":
        asyncio.run(_vacuum_users(seeded.url))
    steps = [
        _show(change_allowances(seeded, base, scale.changed_users)),
        _show(export_users(seeded, users, workdir)),
    ]
    if database in scale.import_on:
        steps.append(_show(import_users(seeded.url, scale.new_users, workdir)))
    steps.append(_show(verify_journal(seeded.url)))
    return AdminRun(database, steps)


# --- the record ---------------------------------------------------------------------------


def table(runs: list[AdminRun]) -> list[str]:
    lines = [
        "| database | what | how | seconds | target (issue 14) | target met | done |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for run in runs:
        for step in run.steps:
            target = met = ""
            if step.target_seconds is not None:
                target = f"≤ {step.target_seconds:g} s"
                if step.entries:
                    target += f" per 1,000,000 ({step.per_million:.1f} s per 1,000,000)"
                met = yes_no(bool(step.met))
            done = ("yes: " if step.ok else "**NO**: ") + step.detail
            lines.append(
                f"| {run.database} | {step.what} | {step.how} | {step.seconds:.2f}"
                f" | {target} | {met} | {done} |"
            )
    return lines


def record(runs: list[AdminRun], scale: Scale, code: str) -> None:
    lines = [
        "",
        heading("Administration at scale", code),
        "",
        '`python -m bench.metering` (bench/admin.py), on the database of "How cost grows"'
        " above it (its organization's users, with their journal): wall-clock time of the"
        " client, the HTTP round trip or the command from start to exit (the interpreter's"
        f" start, about a second, included). The {scale.new_users:,} new users are imported"
        f" into a second organization (on {', '.join(scale.import_on)}); verify runs last,"
        " over everything.",
        "",
        *table(runs),
        "",
    ]
    append_to_results(lines)
