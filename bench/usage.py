"""POST /v1/usage under load, and its limit: the conditional debit of one user and its
journal entry, one transaction each (the spread, hot and over-demand scenarios, and the
spread scenario of bench/growth.py)."""

from __future__ import annotations

import math
import random
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.data import (
    KEY_NAME,
    Seeded,
    add_users,
    balances,
    journal_mark,
    seal,
    settled,
    trace,
)
from bench.figures import Result, grew_by, limit_result, reconcile, unanswered_note
from bench.load import (
    Plan,
    pgbench,
    server_memory,
    timed_loop,
    unanswered,
    wrk,
    wrk_problems,
)
from tokenadmin.bulk import EMAIL_DOMAIN
from tokenadmin.usage.service import ACTIVITY_RESOLUTION

TOKENS = 1  # per request, except in over-demand
NOT_REACHED = "not reached in the run"

# What one metered request must do, and nothing else: the conditional debit and its
# journal entry (the columns `journal.service.record` fills for a usage), one transaction.
# Like the service, it notes the user's last activity at most once a minute (the column is
# indexed: writing it every time would forbid PostgreSQL's in-place updates).
PG_ACTIVITY = (
    "last_activity_at = CASE WHEN last_activity_at > now() - interval '1 minute'"
    " THEN last_activity_at ELSE now() END"
)
SQLITE_ACTIVITY = (
    "last_activity_at = CASE WHEN last_activity_at > ? THEN last_activity_at ELSE ? END"
)
# One statement, so it is also the fewest round trips the work can take. (pgbench reads
# any ":name" as a variable, even in a literal: the actor comes in as one.)
PGBENCH_SCRIPT = f"""\
\\set n random(0, :users - 1)
BEGIN;
WITH debit AS (
  UPDATE users SET inference_used = inference_used + :tokens::bigint, {PG_ACTIVITY}
   WHERE org_id = :org::uuid
     AND email = :prefix::text || lpad(:n::int::text, 6, '0') || '@{EMAIL_DOMAIN}'
     AND inference_used + inference_reserved + :tokens::bigint <= max_tokens
  RETURNING id, max_tokens, inference_used, inference_reserved
)
INSERT INTO journal_entries (org_id, user_id, created_at, actor, action, kind, amount,
    capacity_delta, allocated_delta, allowance_delta, used_delta, reserved_delta,
    allowance_after, used_after, reserved_after, details)
SELECT :org::uuid, id, now(), :actor::text, 'usage', 'inference', :tokens::bigint,
    0, 0, 0, :tokens::bigint, 0, max_tokens, inference_used, inference_reserved,
    '{{"model": "bench"}}'
  FROM debit;
END;
"""

SQLITE_DEBIT = f"""
UPDATE users SET inference_used = inference_used + ?, {SQLITE_ACTIVITY}
 WHERE org_id = ? AND email = ? AND inference_used + inference_reserved + ? <= max_tokens
 RETURNING id, max_tokens, inference_used, inference_reserved
"""
SQLITE_ENTRY = """
INSERT INTO journal_entries (org_id, user_id, created_at, actor, action, kind, amount,
    capacity_delta, allocated_delta, allowance_delta, used_delta, reserved_delta,
    allowance_after, used_after, reserved_after, details)
VALUES (?, ?, ?, ?, 'usage', 'inference', ?, 0, 0, 0, ?, 0, ?, ?, ?, '{"model": "bench"}')
"""


def pgbench_variables(seeded: Seeded, prefix: str, users: int) -> dict[str, object]:
    return {
        "org": seeded.org_id,
        "prefix": prefix,
        "users": users,
        "tokens": TOKENS,
        "actor": f"key:{KEY_NAME}",
    }


def pgbench_limit(
    seeded: Seeded, scenario: str, plan: Plan, workdir: Path, *, prefix: str, users: int
) -> Result:
    """pgbench running the bare debit + journal entry, `plan.connections` clients."""
    before = balances(seeded.url, prefix).used
    timings = pgbench(
        seeded.url,
        PGBENCH_SCRIPT,
        pgbench_variables(seeded, prefix, users),
        clients=plan.connections,
        threads=plan.threads,
        seconds=plan.seconds,
        workdir=workdir,
    )
    after = balances(seeded.url, prefix).used
    exactness = grew_by(before, after, timings.count, TOKENS)
    return limit_result("postgresql", scenario, "limit: pgbench", timings, exactness)


def sqlite_path(seeded: Seeded) -> str:
    return seeded.url.removeprefix("sqlite:///")


def sqlite_connection(seeded: Seeded) -> sqlite3.Connection:
    """One connection as the service opens its writer: WAL, synchronous=FULL, autocommit
    off (each step says BEGIN IMMEDIATE)."""
    connection = sqlite3.connect(sqlite_path(seeded), isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def sqlite_time(value: datetime) -> str:
    """A time as SQLite stores UTCDateTime."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_emails(prefix: str, users: int) -> list[str]:
    return [f"{prefix}{index:06d}@{EMAIL_DOMAIN}" for index in range(users)]


def sqlite_limit(seeded: Seeded, scenario: str, plan: Plan, *, prefix: str, users: int) -> Result:
    """A bare sqlite3 loop doing the debit + journal entry, one transaction each."""
    before = balances(seeded.url, prefix).used
    org = seeded.org_id.hex  # SQLite stores Uuid as CHAR(32)
    emails = sqlite_emails(prefix, users)
    pick = random.Random(7).choice
    connection = sqlite_connection(seeded)

    def debit() -> None:
        now = datetime.now(UTC)
        stamp = sqlite_time(now)
        connection.execute("BEGIN IMMEDIATE")
        activity = (sqlite_time(now - ACTIVITY_RESOLUTION), stamp)
        row = connection.execute(
            SQLITE_DEBIT, (TOKENS, *activity, org, pick(emails), TOKENS)
        ).fetchone()
        if row is None:
            raise RuntimeError("the bare debit was refused; the allowances are too small")
        user_id = row[0]  # then the allowance, used and reserved after
        connection.execute(
            SQLITE_ENTRY, (org, user_id, stamp, f"key:{KEY_NAME}", TOKENS, TOKENS, *row[1:])
        )
        connection.execute("COMMIT")

    try:
        timings = timed_loop(debit, plan.seconds)
    finally:
        connection.close()
    exactness = grew_by(before, balances(seeded.url, prefix).used, timings.count, TOKENS)
    return limit_result("sqlite", scenario, "limit: sqlite3 loop, 1 connection", timings, exactness)


def limit(
    database: str,
    seeded: Seeded,
    scenario: str,
    plan: Plan,
    workdir: Path,
    *,
    prefix: str,
    users: int,
) -> Result:
    """The limit of the database for this scenario (its entries then chained: `seal`)."""
    if database == "postgresql":
        result = pgbench_limit(seeded, scenario, plan, workdir, prefix=prefix, users=users)
    else:
        result = sqlite_limit(seeded, scenario, plan, prefix=prefix, users=users)
    seal(seeded.url)
    return result


def api_system(database: str, plan: Plan) -> str:
    processes = plan.postgres_workers if database == "postgresql" else 1
    return f"tokenadmin API, {processes} process{'es' if processes > 1 else ''}"


def wrk_env(seeded: Seeded, prefix: str, users: int, tokens: int) -> dict[str, str]:
    return {
        "BENCH_KEY": seeded.key,
        "BENCH_PREFIX": prefix,
        "BENCH_FIRST": "0",
        "BENCH_USERS": str(users),
        "BENCH_TOKENS": str(tokens),
    }


def send(
    base: str, seeded: Seeded, plan: Plan, *, prefix: str, users: int, tokens: int, seconds: float
) -> dict[str, Any]:
    """POST /v1/usage through wrk and usage.lua for `seconds`."""
    return wrk(
        base,
        "usage.lua",
        wrk_env(seeded, prefix, users, tokens),
        seconds=seconds,
        timeout=plan.timeout,
        threads=plan.threads,
        connections=plan.connections,
    )


def warm_up(base: str, seeded: Seeded, plan: Plan) -> None:
    """`plan.warmup` seconds of spread requests, not measured."""
    send(base, seeded, plan, prefix="user", users=plan.users, tokens=TOKENS, seconds=plan.warmup)


def api_run(
    seeded: Seeded,
    database: str,
    scenario: str,
    plan: Plan,
    base: str,
    pid: int,
    *,
    prefix: str,
    users: int,
    tokens: int = TOKENS,
    allowance: int | None = None,
) -> Result:
    """POST /v1/usage for `plan.seconds`; exact when the tokens used grew by the requests
    the server accepted, each once (`figures.reconcile`), and, with `allowance`, when they
    used it up exactly."""
    before = balances(seeded.url, prefix).used
    mark = journal_mark(seeded.url)
    figures = send(
        base, seeded, plan, prefix=prefix, users=users, tokens=tokens, seconds=plan.seconds
    )
    accepted, refused = figures["accepted"], figures["refused"]
    answered = accepted + refused + figures["other"]
    missing = unanswered(figures, answered)
    after = (settled if missing else balances)(seeded.url, prefix).used
    kept = trace(seeded.url, seeded.org_id, figures["run"], mark)
    exact, exactness = reconcile(
        after - before,
        tokens,
        accepted,
        kept,
        statuses=(200,),
        actions=("usage",),
        unanswered=missing,
    )
    problems = wrk_problems(figures, answered)
    if allowance is not None:
        total = kept.recorded(200) * tokens
        if total < allowance and refused == 0:
            # Not an inexactness: the run ended before the allowance did.
            exactness += (
                f"; allowance {allowance:,} {NOT_REACHED} ({total:,} accepted tokens, the server"
                " slower than the rate it was sized from): over-demand not checked"
            )
        else:
            exact = exact and total == allowance and after == allowance and refused > 0
            exactness += (
                f"; accepted tokens {total:,} {'=' if total == allowance else '≠'} allowance"
                f" {allowance:,}, {refused:,} refused"
            )
    return Result(
        database,
        scenario,
        api_system(database, plan),
        answered,
        accepted,
        figures["seconds"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        exact and not problems,
        exactness,
        memory=server_memory(pid),
        notes=problems + unanswered_note(missing, plan.timeout),
    )


def over_demand(
    seeded: Seeded, database: str, plan: Plan, base: str, pid: int, rate: float
) -> Result:
    """One user whose allowance runs out about an eighth into the run at `rate` requests a
    second (the closest rate measured): it still runs out if the server is slower now (on
    a loaded machine, up to 8× slower)."""
    requests = max(1, int(rate * plan.seconds / 8))  # the accepted requests, if all is well
    tokens = max(1, math.ceil(seeded.minimum / requests))
    allowance = tokens * requests
    add_users(seeded.url, seeded.org_id, 1, max_tokens=allowance, prefix="over")
    return api_run(
        seeded, database, "over-demand", plan, base, pid,
        prefix="over", users=1, tokens=tokens, allowance=allowance,
    )  # fmt: skip
