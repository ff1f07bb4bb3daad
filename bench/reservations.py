"""Reservations under load: reserve (POST /v1/reservations) then commit the whole amount
(POST /v1/reservations/{id}/commit), pairs measured in pairs a second.

The limit does the same bare work in the project's schema, one transaction each: the
reserve (the conditional debit of the user's reserved column, the reservation row and its
`reserve` journal entry) and the commit (the reservation closed as committed, reserved
moved to used, its `commit` journal entry). PostgreSQL: pgbench, one statement a
transaction; SQLite: a bare sqlite3 loop. Its latency is per pair, the API's per request.

Exact when the tokens used grew by the committed tokens, the users' reserved tokens are
back to what they were (0) and no reservation is left open.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.data import (
    KEY_NAME,
    Balances,
    Seeded,
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
from bench.usage import (
    PG_ACTIVITY,
    SQLITE_ACTIVITY,
    TOKENS,
    api_system,
    pgbench_variables,
    sqlite_connection,
    sqlite_emails,
    sqlite_time,
    wrk_env,
)
from tokenadmin.bulk import EMAIL_DOMAIN
from tokenadmin.usage.service import ACTIVITY_RESOLUTION

PREFIX = "user"
TTL = timedelta(hours=1)  # never expires during a run
DETAILS = '{"model": "bench"}'
ENTRY_COLUMNS = """journal_entries (org_id, user_id, reservation_id, created_at, actor, action,
    kind, amount, capacity_delta, allocated_delta, allowance_delta, used_delta, reserved_delta,
    allowance_after, used_after, reserved_after, details)"""

PGBENCH_SCRIPT = f"""\
\\set n random(0, :users - 1)
BEGIN;
WITH debit AS (
  UPDATE users SET inference_reserved = inference_reserved + :tokens::bigint,
         {PG_ACTIVITY}
   WHERE org_id = :org::uuid
     AND email = :prefix::text || lpad(:n::int::text, 6, '0') || '@{EMAIL_DOMAIN}'
     AND inference_used + inference_reserved + :tokens::bigint <= max_tokens
  RETURNING id, max_tokens, inference_used, inference_reserved
), held AS (
  INSERT INTO reservations (id, org_id, user_id, kind, amount, status, expires_at, created_at,
      details)
  SELECT gen_random_uuid(), :org::uuid, id, 'inference', :tokens::bigint, 'open',
      now() + interval '1 hour', now(), '{{"model": "bench"}}'
    FROM debit
  RETURNING id, user_id
), entry AS (
  INSERT INTO {ENTRY_COLUMNS}
  SELECT :org::uuid, debit.id, held.id, now(), :actor::text, 'reserve', 'inference',
      :tokens::bigint, 0, 0, 0, 0, :tokens::bigint, max_tokens, inference_used,
      inference_reserved, '{{"model": "bench"}}'
    FROM debit JOIN held ON held.user_id = debit.id
)
SELECT id AS reservation FROM held
\\gset
END;
BEGIN;
WITH closed AS (
  UPDATE reservations SET status = 'committed', committed_amount = amount, closed_at = now()
   WHERE id = :reservation::uuid AND status = 'open'
  RETURNING id, user_id, amount
), moved AS (
  UPDATE users SET inference_used = inference_used + closed.amount,
         inference_reserved = inference_reserved - closed.amount, {PG_ACTIVITY}
    FROM closed WHERE users.id = closed.user_id
  RETURNING users.id, closed.id AS reservation_id, closed.amount, max_tokens,
      inference_used, inference_reserved
)
INSERT INTO {ENTRY_COLUMNS}
SELECT :org::uuid, id, reservation_id, now(), :actor::text, 'commit', 'inference', amount,
    0, 0, 0, amount, -amount, max_tokens, inference_used, inference_reserved,
    json_build_object('reserved', amount)
  FROM moved;
END;
"""

SQLITE_RESERVE = f"""
UPDATE users SET inference_reserved = inference_reserved + ?, {SQLITE_ACTIVITY}
 WHERE org_id = ? AND email = ? AND inference_used + inference_reserved + ? <= max_tokens
 RETURNING id, max_tokens, inference_used, inference_reserved
"""
SQLITE_HOLD = """
INSERT INTO reservations (id, org_id, user_id, kind, amount, status, expires_at, created_at,
    details)
VALUES (?, ?, ?, 'inference', ?, 'open', ?, ?, '{"model": "bench"}')
"""
SQLITE_CLOSE = """
UPDATE reservations SET status = 'committed', committed_amount = amount, closed_at = ?
 WHERE id = ? AND status = 'open'
 RETURNING user_id, amount
"""
SQLITE_MOVE = f"""
UPDATE users SET inference_used = inference_used + ?, inference_reserved = inference_reserved - ?,
       {SQLITE_ACTIVITY}
 WHERE id = ?
 RETURNING max_tokens, inference_used, inference_reserved
"""
SQLITE_ENTRY = f"""
INSERT INTO {ENTRY_COLUMNS}
VALUES (?, ?, ?, ?, ?, ?, 'inference', ?, 0, 0, 0, ?, ?, ?, ?, ?, ?)
"""


def _exactness(before: Balances, after: Balances, committed: int) -> tuple[bool, str]:
    exact, text = grew_by(before.used, after.used, committed, TOKENS)
    settled = after.reserved == before.reserved and after.open_reservations == 0
    text = text.replace("accepted", "committed") + (
        f"; reserved {before.reserved:,} → {after.reserved:,},"
        f" {after.open_reservations:,} open reservations"
    )
    return exact and settled, text


def pgbench_limit(seeded: Seeded, plan: Plan, workdir: Path) -> Result:
    """pgbench running the bare reserve and commit, `plan.connections` clients."""
    before = balances(seeded.url, PREFIX)
    timings = pgbench(
        seeded.url,
        PGBENCH_SCRIPT,
        pgbench_variables(seeded, PREFIX, plan.users),
        clients=plan.connections,
        threads=plan.threads,
        seconds=plan.seconds,
        workdir=workdir,
    )
    exactness = _exactness(before, balances(seeded.url, PREFIX), timings.count)
    return limit_result("postgresql", "reservations", "limit: pgbench", timings, exactness)


class _SqlitePair:
    """The bare reserve and commit on one sqlite3 connection, one transaction each."""

    def __init__(self, seeded: Seeded, connection: sqlite3.Connection, users: int) -> None:
        self.execute = connection.execute
        self.org = seeded.org_id.hex  # SQLite stores Uuid as CHAR(32)
        self.emails = sqlite_emails(PREFIX, users)
        self.pick = random.Random(11).choice

    def __call__(self) -> None:
        self.commit(self.reserve())

    def _entry(
        self,
        action: str,
        ids: tuple[str, str],
        stamp: str,
        moved: tuple[int, int, int],
        after: Sequence[int],
        details: str,
    ) -> None:
        """A journal entry: `ids` the user's and the reservation's; `moved` the amount and
        the used and reserved deltas; `after` the allowance, used and reserved after."""
        values = (self.org, *ids, stamp, f"key:{KEY_NAME}", action, *moved, *after, details)
        self.execute(SQLITE_ENTRY, values)

    def reserve(self) -> str:
        now = datetime.now(UTC)
        stamp = sqlite_time(now)
        self.execute("BEGIN IMMEDIATE")
        activity = (sqlite_time(now - ACTIVITY_RESOLUTION), stamp)
        found = self.execute(
            SQLITE_RESERVE, (TOKENS, *activity, self.org, self.pick(self.emails), TOKENS)
        ).fetchone()
        if found is None:
            raise RuntimeError("the bare reserve was refused; the allowances are too small")
        user_id, *after = found
        reservation = uuid.uuid4().hex
        self.execute(
            SQLITE_HOLD, (reservation, self.org, user_id, TOKENS, sqlite_time(now + TTL), stamp)
        )
        moved = (TOKENS, 0, TOKENS)
        self._entry("reserve", (user_id, reservation), stamp, moved, after, DETAILS)
        self.execute("COMMIT")
        return reservation

    def commit(self, reservation: str) -> None:
        now = datetime.now(UTC)
        stamp = sqlite_time(now)
        self.execute("BEGIN IMMEDIATE")
        user_id, amount = self.execute(SQLITE_CLOSE, (stamp, reservation)).fetchone()
        activity = (sqlite_time(now - ACTIVITY_RESOLUTION), stamp)
        after = self.execute(SQLITE_MOVE, (amount, amount, *activity, user_id)).fetchone()
        details = f'{{"reserved": {amount}}}'
        self._entry(
            "commit", (user_id, reservation), stamp, (amount, amount, -amount), after, details
        )
        self.execute("COMMIT")


def sqlite_limit(seeded: Seeded, plan: Plan) -> Result:
    """A bare sqlite3 loop doing reserve then commit, one transaction each."""
    before = balances(seeded.url, PREFIX)
    connection = sqlite_connection(seeded)
    try:
        timings = timed_loop(_SqlitePair(seeded, connection, plan.users), plan.seconds)
    finally:
        connection.close()
    exactness = _exactness(before, balances(seeded.url, PREFIX), timings.count)
    return limit_result(
        "sqlite", "reservations", "limit: sqlite3 loop, 1 connection", timings, exactness
    )


def limit(database: str, seeded: Seeded, plan: Plan, workdir: Path) -> Result:
    """The limit of the database (its entries then chained: `seal`)."""
    if database == "postgresql":
        result = pgbench_limit(seeded, plan, workdir)
    else:
        result = sqlite_limit(seeded, plan)
    seal(seeded.url)
    return result


def api_run(seeded: Seeded, database: str, plan: Plan, base: str, pid: int) -> Result:
    """Reserve-then-commit pairs through wrk and reservations.lua for `plan.seconds`, one
    connection per wrk thread (so each connection commits what it reserved). Exact when the
    tokens used grew by the commits the server made, each once (`figures.reconcile`), and
    what is still reserved is exactly the reservations whose reserve or commit went
    unanswered within the timeout (none, normally): they expire by their TTL."""
    before = balances(seeded.url, PREFIX)
    mark = journal_mark(seeded.url)
    figures = wrk(
        base,
        "reservations.lua",
        wrk_env(seeded, PREFIX, plan.users, TOKENS),
        seconds=plan.seconds,
        timeout=plan.timeout,
        threads=plan.connections,
        connections=plan.connections,
    )
    reserved, committed = figures["reserved"], figures["committed"]
    answered = reserved + committed + figures["refused"] + figures["other"]
    problems = wrk_problems(figures, answered)
    missing = unanswered(figures, answered)
    after = (settled if missing else balances)(seeded.url, PREFIX)
    kept = trace(seeded.url, seeded.org_id, figures["run"], mark)
    exact, exactness = reconcile(
        after.used - before.used,
        TOKENS,
        committed,
        kept,
        statuses=(200,),
        actions=("commit",),
        unanswered=missing,
        what="committed",
    )
    held = kept.recorded(201) - kept.recorded(200)  # reserved, never committed
    late = kept.recorded(201) - reserved + kept.recorded(200) - committed
    consistent = (
        kept.entries.get("reserve", 0) == kept.recorded(201)
        and after.reserved - before.reserved == held * TOKENS
        and after.open_reservations - before.open_reservations == held
        and 0 <= held <= missing
        and late <= missing
    )
    exactness += (
        f"; reserved {before.reserved:,} → {after.reserved:,},"
        f" {after.open_reservations:,} open reservations"
    )
    if held:
        exactness += (
            f" (held by {held:,} reservations whose commit never came: their TTL ends them)"
        )
    return Result(
        database,
        "reservations",
        api_system(database, plan),
        committed,
        committed,
        figures["seconds"],
        figures["p50_us"] / 1000,
        figures["p99_us"] / 1000,
        exact and consistent and not problems,
        exactness,
        unit="pairs",
        memory=server_memory(pid),
        notes=problems + unanswered_note(missing, plan.timeout),
    )
