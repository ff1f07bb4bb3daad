"""Benchmark: metering under load, against the limit of the database; how its cost grows;
administration at scale.

    .venv/bin/python -m bench.metering [--quick] [--databases postgresql,sqlite]
                                       [--parts metering,growth] [--users 10000]
                                       [--seconds 10] [--journal-rows 1000000,3000000]
                                       [--no-record]

Part "metering": for each database it makes a throwaway one (a PostgreSQL database it
creates and drops; a SQLite file in a temporary directory), seeds one organization with
`bulk.seed_users` and an API key with the `usage` scope, and measures each scenario on the
same data, where it has one against its limit:

- the limit: the work the API's operation must do, and nothing else, in the project's
  schema, one transaction each. On PostgreSQL with `pgbench` (same number of clients,
  `-M prepared`); on SQLite with a bare `sqlite3` loop in one process (WAL,
  synchronous=FULL, as the service opens it).
- tokenadmin: a real server process (`uvicorn --workers 2` on PostgreSQL, one process on
  SQLite) driven by `wrk` with a Lua script of this folder, real requests.

Scenarios: "spread" (a random one of the seeded users per request), "hot" (one user for
every connection), "over-demand" (one user whose allowance runs out mid-run; the API
only: accepted tokens must equal the allowance exactly), "batch" (POST /v1/usage/batch,
1,000 events a request; the API only), "reservations" (reserve then commit) and, last,
"binding" (spread again once the organization's capacity binds, SPEC rule 3: each
transaction also locks the organization's row and keeps its running totals; the API only).

After each run it checks exactness: the tokens used in the database grew by exactly the
accepted operations times their tokens (reservations: nothing is left reserved); after
each database, `tokenadmin verify` is clean.

Part "growth" (bench/growth.py): the spread scenario and the user table's query at 1,000,
10,000 and 100,000 users and with the journal grown to 1,000,000 and 3,000,000 rows
(--journal-rows), a round of batches at 100,000 users and at each journal size; then, on
that database, administration at scale (bench/admin.py).

Last, issue 14's targets beside the figures of this run (bench/targets.py).

Everything is on loopback, bounded in time, and cleaned up even on failure. Results are
appended to bench/RESULTS.md (not with --quick or --no-record).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench import admin, batch, growth, reservations, targets, usage
from bench.data import Seeded, make_binding, seed_metering, verify
from bench.figures import Result, append_to_results, heading, show, yes_no
from bench.load import Plan
from bench.user_table import RESULTS, _state_of_the_code, _throwaway_database, server
from tokenadmin.migrate import upgrade

SCENARIOS = ("spread", "hot", "over-demand", "batch", "reservations", "binding")
TARGETS = (
    "Targets (issue 14): PostgreSQL spread API ÷ pgbench ≥ 1.0 (2 server processes); spread"
    f" p99 ≤ {targets.P99_TARGET_MS:g} ms at 64 connections; PostgreSQL hot API ÷ pgbench"
    " ≥ 3.0; SQLite spread API ÷ bare sqlite3 loop ≥ 0.8; batch"
    f" ≥ {batch.TARGET_EVENTS_PER_SECOND:,} events/s on both databases; server memory"
    f" ≤ {targets.MEMORY_TARGET_MB} MB per process. Over-demand: accepted = allowance exactly."
)


@dataclass
class DatabaseRun:
    database: str
    results: list[Result]
    verify_clean: bool
    verify_summary: str
    seed_seconds: float


# --- one database -------------------------------------------------------------------------

TARGET_USERS = {"spread": ("user", None), "hot": ("hot", 1)}


def _targets(scenario: str, plan: Plan) -> tuple[str, int]:
    prefix, users = TARGET_USERS[scenario]
    return prefix, users or plan.users


def run_limits(database: str, seeded: Seeded, plan: Plan, workdir: Path) -> list[Result]:
    results = []
    for scenario in ("spread", "hot"):
        if scenario in plan.scenarios:
            prefix, users = _targets(scenario, plan)
            results.append(
                show(
                    usage.limit(
                        database, seeded, scenario, plan, workdir, prefix=prefix, users=users
                    )
                )
            )
    if "reservations" in plan.scenarios:
        results.append(show(reservations.limit(database, seeded, plan, workdir)))
    return results


def run_api(database: str, seeded: Seeded, plan: Plan, base: str, pid: int) -> list[Result]:
    """Every scenario of the plan through the API of the server at `base`."""
    if plan.warmup:
        usage.warm_up(base, seeded, plan)
    results = []
    for scenario in ("spread", "hot"):
        if scenario in plan.scenarios:
            prefix, users = _targets(scenario, plan)
            run = usage.api_run(
                seeded, database, scenario, plan, base, pid, prefix=prefix, users=users
            )
            results.append(show(run))
    if "over-demand" in plan.scenarios:
        # Sized from the closest rate measured, so that it runs out about halfway through.
        rates = [r.per_second for r in results if r.scenario == "hot"] or [
            r.per_second for r in results
        ]
        rate = rates[0] if rates else 100.0
        results.append(show(usage.over_demand(seeded, database, plan, base, pid, rate)))
    if "batch" in plan.scenarios:
        results.append(show(batch.api_run(seeded, database, plan, base, pid)))
    if "reservations" in plan.scenarios:
        results.append(show(reservations.api_run(seeded, database, plan, base, pid)))
    if "binding" in plan.scenarios:
        # Last: the organization binds from now on (rule 3), for the spread scenario again.
        make_binding(seeded.url, seeded.org_id)
        prefix, users = _targets("spread", plan)
        run = usage.api_run(
            seeded, database, "binding", plan, base, pid, prefix=prefix, users=users
        )
        spread = [r for r in results if r.scenario == "spread"]
        if spread and spread[0].per_second:
            ratio = run.per_second / spread[0].per_second
            run = replace(run, notes=[*run.notes, f"{ratio:.2f}× the spread scenario's rate"])
        results.append(show(run))
    return results


def run_database(database: str, plan: Plan, postgres_admin_url: str) -> DatabaseRun:
    """Seed a throwaway database, run every scenario of the plan, verify, drop it."""
    with (
        _throwaway_database(database, postgres_admin_url) as url,
        tempfile.TemporaryDirectory(prefix="tokenadmin-metering-") as scratch,
    ):
        upgrade(url)
        started = time.perf_counter()
        seeded = seed_metering(url, plan.users)
        seed_seconds = time.perf_counter() - started
        print(f"{database}: seeded {plan.users:,} users in {seed_seconds:.1f} s", flush=True)
        results = run_limits(database, seeded, plan, Path(scratch))
        workers = plan.postgres_workers if database == "postgresql" else 1
        with server(url, workers) as (base, pid):
            results += run_api(database, seeded, plan, base, pid)
        clean, summary = verify(url)
        print(f"  tokenadmin verify: {'clean' if clean else 'NOT CLEAN'} ({summary})", flush=True)
    return DatabaseRun(database, results, clean, summary, seed_seconds)


# --- the record ---------------------------------------------------------------------------


def targets_met(result: Result, limit: Result | None) -> str:
    """Each target of issue 14 this row has, and whether it was met."""
    key = (result.database, result.scenario)
    checks: list[tuple[str, bool]] = []
    if key in targets.RATIO_TARGETS and limit is not None:
        target = targets.RATIO_TARGETS[key]
        checks.append((f"÷ limit ≥ {target:g}", result.per_second >= target * limit.per_second))
    if result.scenario == "spread":
        target_ms = targets.P99_TARGET_MS
        checks.append((f"p99 ≤ {target_ms:g} ms", result.p99_ms <= target_ms))
    if result.scenario == "batch":
        target = batch.TARGET_EVENTS_PER_SECOND
        checks.append((f"≥ {target:,} events/s", result.per_second >= target))
    if result.scenario == "over-demand" and usage.NOT_REACHED not in result.exactness:
        checks.append(("accepted = allowance", result.exact))
    if result.memory is not None:
        peak = max(result.memory.peak)
        memory = targets.MEMORY_TARGET_MB
        checks.append((f"≤ {memory} MB per process", peak <= memory))
    return "; ".join(f"{name}: {yes_no(met)}" for name, met in checks)


def table(runs: list[DatabaseRun]) -> list[str]:
    lines = [
        "| database | scenario | system | rate | p50 ms | p99 ms | API ÷ limit"
        " | server RSS MB per process (peak) | target met (issue 14) | exact |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in runs:
        limits = {r.scenario: r for r in run.results if r.is_limit}
        for r in run.results:
            limit = None if r.is_limit else limits.get(r.scenario)
            ratio = f"{r.per_second / limit.per_second:.2f}" if limit and limit.per_second else ""
            exact = ("yes: " if r.exact else "**NO**: ") + r.exactness
            exact += "".join(f"; {note}" for note in r.notes)
            lines.append(
                f"| {run.database} | {r.scenario} | {r.system} | {r.rate}"
                f" | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {ratio} | {r.memory or ''}"
                f" | {'' if r.is_limit else targets_met(r, limit)} | {exact} |"
            )
    return lines


def record(runs: list[DatabaseRun], plan: Plan, code: str, load: tuple[float, float]) -> None:
    lines = [
        "",
        heading("Metering", code),
        "",
        f"`python -m bench.metering`: {plan.users:,} seeded users, {plan.connections}"
        f" connections ({plan.threads} threads; batch: {plan.batch_connections} connections"
        f" of {plan.batch_events:,} events a request; reservations: one connection per wrk"
        f" thread), {plan.seconds:g} s per run, 1 token per request or event (over-demand:"
        " sized to run out an eighth in). The limit is the bare work of the operation in one"
        " transaction (pgbench `-M prepared`; SQLite: a `sqlite3` loop in one connection,"
        " WAL, synchronous=FULL): the debit and its journal entry; for reservations the"
        " reserve and the commit, counted in pairs (latency per pair; the API's per"
        " request). The API is driven by wrk and the Lua scripts of bench/, on the same"
        f" data; wrk waits up to {plan.timeout:g} s (its --timeout) for the answers due when"
        " sending stops, and a request committed but unanswered is counted as such from the"
        " idempotency records and the journal (bench/README.md). Load average (1 min) at"
        f" the start {load[0]:.1f}, at the end {load[1]:.1f};"
        " wrk, pgbench and the servers share the machine.",
        "",
        TARGETS,
        "",
        *table(runs),
        "",
        "`tokenadmin verify` after each database: "
        + "; ".join(
            f"{run.database} {'clean' if run.verify_clean else '**NOT CLEAN**'}"
            f" ({run.verify_summary})"
            for run in runs
        )
        + ".",
        "",
    ]
    append_to_results(lines)


# --- the command --------------------------------------------------------------------------


def _options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.metering", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short runs; records nothing"
    )
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--parts", default="metering,growth", help="metering, growth or both")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TOKENADMIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="A PostgreSQL server where a throwaway database may be created.",
    )
    parser.add_argument(
        "--journal-rows",
        default=None,
        help="growth: the journal sizes measured at 100,000 users (default 1000000,3000000)",
    )
    parser.add_argument("--no-record", action="store_true", help="Don't append to RESULTS.md.")
    options = parser.parse_args()
    problems = []
    if options.users is not None and not 1 <= options.users <= 1_000_000:
        problems.append("--users is 1 to 1,000,000")
    if options.seconds is not None and not 0.5 <= options.seconds <= 300:
        problems.append("--seconds is 0.5 to 300")
    if unknown := set(options.databases.split(",")) - {"sqlite", "postgresql"}:
        problems.append(f"unknown databases {sorted(unknown)}")
    if unknown := set(options.parts.split(",")) - {"metering", "growth"}:
        problems.append(f"unknown parts {sorted(unknown)}")
    if missing := [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]:
        problems.append(f"needs {' and '.join(missing)} (apt-get install wrk postgresql-contrib)")
    if options.journal_rows is not None:
        try:
            rows = [int(size) for size in options.journal_rows.split(",")]
        except ValueError:
            rows = []
        if not rows or rows != sorted(rows) or not all(0 < n <= 10_000_000 for n in rows):
            problems.append("--journal-rows is increasing sizes of 1 to 10,000,000, by commas")
    if problems:
        parser.error("; ".join(problems))
    return options


def _plan(options: argparse.Namespace) -> Plan:
    plan = Plan(connections=options.connections)
    if options.quick:
        plan = replace(plan, users=1_000, seconds=3.0)
    if options.users:
        plan = replace(plan, users=options.users)
    if options.seconds:
        plan = replace(plan, seconds=options.seconds)
    return plan


def main() -> None:
    options = _options()
    databases, parts = options.databases.split(","), options.parts.split(",")
    keep = not (options.no_record or options.quick)
    code = _state_of_the_code()
    load_at_start = os.getloadavg()[0]
    clean = True
    plan = _plan(options)
    runs: list[DatabaseRun] = []
    runs_at_scale: list[growth.RunAtScale] = []
    if "metering" in parts:
        runs = [run_database(database, plan, options.postgres_url) for database in databases]
        print("\n".join(table(runs)))
        if keep:
            record(runs, plan, code, (load_at_start, os.getloadavg()[0]))
        clean = all(run.verify_clean and all(r.exact for r in run.results) for run in runs)
    if "growth" in parts:
        sizes = growth.QUICK if options.quick else growth.Sizes()
        if options.journal_rows is not None:
            rows = tuple(int(size) for size in options.journal_rows.split(","))
            sizes = replace(sizes, journal_rows=rows)
        scale = admin.QUICK if options.quick else admin.Scale()
        runs_at_scale = [
            growth.run_database(database, sizes, scale, options.postgres_url)
            for database in databases
        ]
        print("\n".join(growth.table([run.growth for run in runs_at_scale])))
        print("\n".join(admin.table([run.admin for run in runs_at_scale])))
        if keep:
            growth.record([run.growth for run in runs_at_scale], sizes, code)
            admin.record([run.admin for run in runs_at_scale], scale, code)
        clean = clean and all(run.clean for run in runs_at_scale)
    found = targets.rows(
        {run.database: run.results for run in runs},
        {run.growth.database: run for run in runs_at_scale},
        plan.connections,
    )
    print("\n".join(targets.table(found)))
    if keep:
        targets.record(found, code, clean, (load_at_start, os.getloadavg()[0]))
        print(f"Appended to {RESULTS}.")
    if not clean:
        sys.exit("An exactness check failed; see above.")


if __name__ == "__main__":
    main()
