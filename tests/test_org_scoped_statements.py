"""Every statement of the metering path and of allowance changes names one organization.

No transaction of metering or of an allowance change spans two organizations, and every
statement in it says which one it is for, so each table can be distributed by organization
(docs/SCALING.md: Citus, every table distributed by `org_id`, a statement routed to the
one node that holds its organization). This test keeps that true: it captures every
statement the database driver is given (SQLAlchemy's `before_cursor_execute`, asyncpg's
`copy_records_to_table` and `fetch`, and sqlite3's statements sent by the metering engine
in aiosqlite's thread, `usage.sqlite_raw.Statements`) while an organization's key meters
usage, a batch, reservations committed and released, and changes one allowance and many,
and checks each statement against the table it touches:

- a table with an `org_id` column: the statement compares `org_id` (or, an INSERT or a
  COPY, names the column) and binds this organization's id, and no other organization's; each row of
  an executemany carries it;
- `organizations`: compared by `id`, bound to this organization's id;
- `idempotency_records`: compared by `scope`, bound to `org:<id>`, and no other scope;
- a statement that touches no table (BEGIN, COMMIT, SAVEPOINT, `nextval`, the advisory
  locks keyed by the organization) needs nothing;
- the tables of `SHARED` hold rows of no one organization; each says why it may be read
  without one (a reference table, copied to every node).

The bound parameters are checked, not only the SQL: the statement must carry the
organization's id as a value. Table names and parameters are matched, not the exact SQL,
so the check holds whatever shape the statements take (the ORM, text, arrays and unnest).
"""

from __future__ import annotations

import re
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import greenlet  # type: ignore[import-untyped]
from sqlalchemy import event

import tokenadmin
from tests.helpers import Api, funded_org
from tests.scenarios import event as usage_event
from tests.scenarios import org_api
from tokenadmin.database import Database
from tokenadmin.models import Base
from tokenadmin.usage import sqlite_raw

PACKAGE = str(Path(tokenadmin.__file__).parent)
ROOT = Path(PACKAGE).parent
BY_ID = "organizations"
BY_SCOPE = "idempotency_records"
SHARED = {
    "api_keys": "authentication finds a key by its hash, and the metering transaction"
    " confirms it is not revoked by its id, before any organization is known (operator keys"
    " have none): a small reference table, written when a key is made or revoked",
    "access_tokens": "short-lived tokens traded for an API key (the Ask Sage API), found by"
    " their hash like the keys themselves: a reference table",
    "llm_models": "the catalog: the platform's models (org_id NULL) apply to every"
    " organization beside its own rows, so it is a reference table",
    "operators": "platform operators belong to no organization",
    "dashboard_sessions": "a signed-in browser, found by its token's hash before its"
    " organization is known",
    "sign_in_failures": "sign-in throttling, keyed by email and address",
    "job_leases": "the background jobs' schedule, one row per job across the platform",
    "notification_cursors": "one row per event consumer across the platform",
    "webhook_attempts": "the attempts of one delivery, found by the delivery's id; it has"
    " no org_id, and needs its delivery's before the tables are distributed",
}
"""Tables without a row per organization, with why a statement may read them without one."""

TABLES = dict(Base.metadata.tables)
BY_ORG_ID = {name for name, table in TABLES.items() if "org_id" in table.c and name not in SHARED}
_TABLE = re.compile(r'\b(?:FROM|JOIN|UPDATE|INTO|COPY)\s+"?(\w+)"?', re.IGNORECASE)
# A condition on the column: it follows a WHERE or an ON (`org_id = $1`, `org_id = ANY
# ($1)`, `(t.org_id, t.id) = (v.org_id, v.id)`, `ON CONFLICT (org_id, key)`).
_ORG_ID_COMPARED = re.compile(r"\b(?:WHERE|ON)\b.*\borg_id\b", re.IGNORECASE | re.DOTALL)
_ID_COMPARED = re.compile(r"(?:^|[\s.(\"])id\"?\s*(?:=|IN\b)", re.IGNORECASE)
_SCOPE_COMPARED = re.compile(r"\b(?:WHERE|ON)\b.*\bscope\b", re.IGNORECASE | re.DOTALL)
_INSERT_INTO = re.compile(
    r'\b(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|COPY)\s+"?(\w+)"?\s*\(([^)]*)\)', re.IGNORECASE
)

ALLOWED = [
    (
        "sqlite",
        "journal_entries",
        re.compile(r"\bmax\s*\(", re.IGNORECASE),
        "the journal's next ids, read under SQLite's one writer lock: a SQLite database is"
        " one file, never distributed (PostgreSQL takes them from the sequence)",
    ),
]
"""Statements allowed without their organization: (dialect, table, shape, why)."""


@dataclass
class Statement:
    sql: str
    rows: list[list[Any]]
    """The bound values of each parameter set (one for execute, one per row for
    executemany), arrays flattened: what the compiled statement bound, and what the driver
    was given."""
    origin: str = ""
    """The tokenadmin functions that issued it, innermost first."""

    def tables(self) -> set[str]:
        return {name.lower() for name in _TABLE.findall(self.sql)} & TABLES.keys()


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _flat(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _flat(item)
    else:
        yield value


def _parameter_sets(parameters: Any, executemany: bool) -> list[Any]:
    if executemany:
        return list(parameters)
    return [parameters]


def _origin() -> str:
    """Where in tokenadmin the statement comes from: its three innermost functions."""
    stack = traceback.extract_stack()
    # An AsyncSession runs its statements in a greenlet of its own: the code that awaited
    # them is on the stack of the greenlet that switched to it.
    parent = greenlet.getcurrent().parent
    if parent is not None and parent.gr_frame is not None:
        stack = traceback.StackSummary([*traceback.extract_stack(parent.gr_frame), *stack])
    frames = [
        f"{Path(frame.filename).relative_to(ROOT).as_posix()}:{frame.name}"
        for frame in reversed(stack)
        if frame.filename.startswith(PACKAGE) and not frame.filename.endswith("database.py")
    ]
    return " < ".join(dict.fromkeys(frames[:3]))


@contextmanager
def captured(database: Database) -> Iterator[list[Statement]]:
    """Every statement the driver runs on the database's engines while the block runs, and
    every COPY into a table through asyncpg (`copy_records_to_table`, which SQLAlchemy's
    events do not see), as `COPY table (columns)` with one row per record, and every
    statement sent on asyncpg's connection directly (`Connection.fetch`: the metering
    engine's, `usage.engine._Raw`) or on sqlite3's in aiosqlite's thread (the metering
    engine's, `usage.sqlite_raw.Statements`), with their bound values."""
    statements: list[Statement] = []

    def before_cursor_execute(
        _connection: Any,
        _cursor: Any,
        sql: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        given = _parameter_sets(parameters, executemany)
        compiled = list(getattr(context, "compiled_parameters", None) or [])
        if getattr(context, "compiled", None) is None or len(compiled) != len(given):
            compiled = [{}] * len(given)
        rows = [
            list(_flat(one)) + list(_flat(bound))
            for one, bound in zip(given, compiled, strict=True)
        ]
        statements.append(Statement(sql, rows, _origin()))

    copy_records = asyncpg.Connection.copy_records_to_table

    async def copy_records_to_table(
        connection: Any, table_name: str, *, records: Any, columns: Any = None, **options: Any
    ) -> Any:
        if isinstance(records, list | tuple):
            rows = [list(_flat(record)) for record in records]
        else:  # an iterator or an async iterator: not read here, so nothing is seen bound
            rows = [[]]
        copied = f"COPY {table_name} ({', '.join(columns or [])}) FROM STDIN"
        statements.append(Statement(copied, rows, _origin()))
        return await copy_records(
            connection, table_name, records=records, columns=columns, **options
        )

    fetch = asyncpg.Connection.fetch

    async def fetch_raw(connection: Any, query: str, *args: Any, **options: Any) -> Any:
        statements.append(Statement(query, [list(_flat(args))], _origin()))
        return await fetch(connection, query, *args, **options)

    execute, executemany = sqlite_raw.Statements.execute, sqlite_raw.Statements.executemany

    def execute_raw(self: sqlite_raw.Statements, sql: str, parameters: Any = ()) -> Any:
        statements.append(Statement(sql, [list(_flat(parameters))], _origin()))
        return execute(self, sql, parameters)

    def executemany_raw(self: sqlite_raw.Statements, sql: str, rows: Any) -> None:
        rows = [list(row) for row in rows]
        statements.append(Statement(sql, [list(_flat(row)) for row in rows], _origin()))
        executemany(self, sql, rows)

    engines = {id(e): e.sync_engine for e in (database.engine, database.read_engine)}
    for engine in engines.values():
        event.listen(engine, "before_cursor_execute", before_cursor_execute)
    asyncpg.Connection.copy_records_to_table = copy_records_to_table
    asyncpg.Connection.fetch = fetch_raw
    sqlite_raw.Statements.execute = execute_raw  # type: ignore[method-assign]
    sqlite_raw.Statements.executemany = executemany_raw  # type: ignore[method-assign]
    try:
        yield statements
    finally:
        asyncpg.Connection.copy_records_to_table = copy_records
        asyncpg.Connection.fetch = fetch
        sqlite_raw.Statements.execute = execute  # type: ignore[method-assign]
        sqlite_raw.Statements.executemany = executemany  # type: ignore[method-assign]
        for engine in engines.values():
            event.remove(engine, "before_cursor_execute", before_cursor_execute)


def _as_org_id(value: Any) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) in (32, 36):
        try:
            return uuid.UUID(value)
        except ValueError:
            return None
    return None


def _scopes(values: Sequence[Any]) -> set[str]:
    return {v for v in values if isinstance(v, str) and (v == "platform" or v.startswith("org:"))}


def _inserted(sql: str) -> dict[str, set[str]]:
    """The columns each INSERT of the statement names, by table (a CTE may hold several)."""
    return {
        table.lower(): {c.strip().strip('"').lower() for c in columns.split(",")}
        for table, columns in _INSERT_INTO.findall(sql)
    }


def _allowed(statement: Statement, dialect: str) -> str | None:
    """Why a statement is allowed without its organization, if it is listed."""
    for listed_dialect, table, shape, reason in ALLOWED:
        if (
            dialect == listed_dialect
            and table in statement.tables()
            and shape.search(statement.sql)
        ):
            return reason
    return None


def problems(
    statement: Statement, org: uuid.UUID, others: set[uuid.UUID], dialect: str = "postgresql"
) -> list[str]:
    """Why the statement does not name exactly organization `org` (empty: it does)."""
    if _allowed(statement, dialect):
        return []
    sql = statement.sql
    found: list[str] = []
    tables = statement.tables()
    inserted = _inserted(sql)
    scope = f"org:{org}"
    for values in statement.rows:
        ids = {i for i in map(_as_org_id, values) if i is not None}
        if ids & others:
            found.append("binds another organization's id")
        for table in sorted(tables & (BY_ORG_ID | {BY_ID})):
            named = "org_id" in inserted.get(table, ()) or bool(_ORG_ID_COMPARED.search(sql))
            if table == BY_ID:
                named = named or "id" in inserted.get(table, ()) or bool(_ID_COMPARED.search(sql))
            if not named:
                found.append(f"{table}: no org_id condition")
            elif org not in ids:
                found.append(f"{table}: this organization's id is not bound")
        if BY_SCOPE in tables:
            scopes = _scopes(values)
            named = "scope" in inserted.get(BY_SCOPE, ()) or bool(_SCOPE_COMPARED.search(sql))
            if not named:
                found.append(f"{BY_SCOPE}: no scope condition")
            elif scopes != {scope}:
                found.append(f"{BY_SCOPE}: scopes bound {sorted(scopes)}, not [{scope!r}]")
    return sorted(set(found))


def test_every_table_is_scoped_by_organization_or_listed_as_shared() -> None:
    unknown = {
        name
        for name, table in TABLES.items()
        if name not in SHARED | {BY_ID: "", BY_SCOPE: ""} and "org_id" not in table.c
    }
    assert not unknown, f"say how these tables are distributed: {sorted(unknown)}"
    nullable = {name for name in BY_ORG_ID if TABLES[name].c.org_id.nullable}
    assert not nullable, f"org_id may be NULL, so a row may belong to no one: {sorted(nullable)}"
    assert set(SHARED) <= TABLES.keys()


def _why(problem_rows: list[tuple[Statement, list[str]]]) -> str:
    lines = []
    for statement, found in problem_rows:
        sql = " ".join(statement.sql.split())
        lines.append(f"- {'; '.join(found)} ({statement.origin})\n    {sql[:300]}")
    return "\n".join(lines)


async def _world(api: Api) -> tuple[uuid.UUID, set[uuid.UUID], Api, dict[str, Any]]:
    ours = await funded_org(api, inference=10_000_000, training=1_000_000)
    theirs = await funded_org(api, inference=10_000_000, training=1_000_000)
    users = {}
    for name in ("ana", "ben", "cy"):
        users[name] = await api.user(ours, f"{name}@ours.example", max_tokens=300_000)
        await api.user(theirs, f"{name}@theirs.example", max_tokens=300_000)
    await api.user(ours, "dee@ours.example", max_tokens=200_000, max_train_tokens=50_000)
    admin = await org_api(api, ours, "admin", "usage", "read")
    # Warm: the first request of a key reads it; the key cache is this process's.
    await admin.get(f"/v1/organizations/{ours}/balance")
    return uuid.UUID(ours), {uuid.UUID(theirs)}, admin, users


async def _meter(admin: Api, users: dict[str, Any]) -> None:
    ana, ben, cy = users["ana"], users["ben"], users["cy"]
    # Usage by email and by id, and a replay of the first.
    await admin.use("ana@ours.example", 1_000, key="first", expect=200)
    await admin.use(ben["id"], 2_000, expect=200)
    replay = await admin.use("ana@ours.example", 1_000, key="first", expect=200)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    # Counted usage, charged by the default rates; a refusal, kept like a success.
    counted = {"user": cy["id"], "kind": "inference", "prompt_tokens": 30, "completion_tokens": 7}
    await admin.post("/v1/usage", counted, idempotency_key="counted", expect=200)
    await admin.use(cy["id"], 10_000_000, expect=402)
    # A batch: four users, a key used before, a refused event.
    batch = [
        usage_event("ana@ours.example", 10),
        usage_event(ben["id"], 20),
        usage_event(cy["id"], 30, idempotency_key="first"),
        usage_event("dee@ours.example", 5, kind="training"),
        usage_event(ana["id"], 10_000_000),
    ]
    answer = await admin.post("/v1/usage/batch", {"events": batch}, expect=200)
    assert [r["accepted"] for r in answer["results"]] == [True, True, False, True, False]
    # Reservations: one committed for less than it held, one released.
    hold = {"user": ana["id"], "kind": "inference", "tokens": 5_000}
    held = await admin.post("/v1/reservations", hold, idempotency_key="hold", expect=201)
    commit = f"/v1/reservations/{held['id']}/commit"
    await admin.post(commit, {"tokens": 3_000}, idempotency_key="commit", expect=200)
    hold = {"user": "ben@ours.example", "kind": "inference", "tokens": 4_000}
    other = await admin.post("/v1/reservations", hold, expect=201)
    await admin.post(f"/v1/reservations/{other['id']}/release", expect=200)


async def _change_allowances(org: uuid.UUID, admin: Api, users: dict[str, Any]) -> None:
    one = {"max_tokens": 350_000, "reason": "more"}
    await admin.patch(f"/v1/users/{users['ana']['id']}", one, idempotency_key="one", expect=200)
    rows = [
        {"user": users["ben"]["id"], "max_tokens": 400_000},
        {"user": "cy@ours.example", "max_tokens": 250_000, "max_train_tokens": 10_000},
        {"user": "dee@ours.example", "max_train_tokens": 60_000},
    ]
    many = {"changes": rows, "reason": "quarter"}
    path = f"/v1/organizations/{org}/allowances"
    answer = await admin.post(path, many, idempotency_key="many", expect=200)
    assert answer["applied"] is True


def _check(
    statements: list[Statement], org: uuid.UUID, others: set[uuid.UUID], dialect: str
) -> None:
    refused = [(s, p) for s in statements if (p := problems(s, org, others, dialect))]
    assert not refused, (
        f"{len(refused)} of {len(statements)} statements do not name one organization"
        f" ({dialect}):\n{_why(refused)}"
    )


async def test_metering_statements_name_one_organization(db: Database, api: Api) -> None:
    org, others, admin, users = await _world(api)

    with captured(db) as statements:
        await _meter(admin, users)

    touched = set().union(*(s.tables() for s in statements))
    written = {"users", "journal_entries", "reservations", "idempotency_records"}
    assert touched >= written, f"the capture missed the metering writes: {sorted(touched)}"
    _check(statements, org, others, db.dialect)


async def test_allowance_change_statements_name_one_organization(db: Database, api: Api) -> None:
    org, others, admin, users = await _world(api)

    with captured(db) as statements:
        await _change_allowances(org, admin, users)

    touched = set().union(*(s.tables() for s in statements))
    written = {"users", "organizations", "journal_entries", "idempotency_records"}
    assert touched >= written, f"the capture missed the allowance writes: {sorted(touched)}"
    _check(statements, org, others, db.dialect)


def test_the_check_refuses_a_statement_without_its_organization() -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    update = Statement(
        "UPDATE users SET inference_used = ? WHERE users.id = ?", [[5, uuid.uuid4()]]
    )
    assert problems(update, org, {other}) == ["users: no org_id condition"]
    wrong = Statement("SELECT * FROM users WHERE users.org_id = $1", [[other]])
    assert "binds another organization's id" in problems(wrong, org, {other})
    unbound = Statement("SELECT * FROM journal_entries WHERE org_id = $1", [[uuid.uuid4()]])
    assert problems(unbound, org, {other}) == [
        "journal_entries: this organization's id is not bound"
    ]
    keys = Statement(
        "SELECT * FROM idempotency_records WHERE scope = $1 AND key IN ($2)", [["platform", "k"]]
    )
    assert problems(keys, org, {other}) == [
        f"idempotency_records: scopes bound ['platform'], not ['org:{org}']"
    ]
    rows = Statement(
        "INSERT INTO journal_entries (id, org_id, amount) VALUES (?, ?, ?)",
        [[1, org.hex, 5], [2, other.hex, 5]],
    )
    assert problems(rows, org, {other}) == [
        "binds another organization's id",
        "journal_entries: this organization's id is not bound",
    ]
    good = Statement(
        "INSERT INTO journal_entries (id, org_id) SELECT * FROM unnest($1::bigint[], $2::uuid[])",
        [[1, 2, org, org]],
    )
    assert problems(good, org, {other}) == []
    cte = Statement(
        "WITH debited AS (UPDATE users SET inference_used = inference_used + 1"
        " WHERE org_id = $1 AND id = ANY($2) RETURNING id)"
        " INSERT INTO idempotency_records (scope, key) SELECT $3, unnest($4::text[])",
        [[org, uuid.uuid4(), f"org:{org}", "a", "b"]],
    )
    assert problems(cte, org, {other}) == []
    pairs = Statement(
        "UPDATE users AS t SET inference_used = v.used FROM unnest($1::uuid[], $2::uuid[],"
        " $3::bigint[]) AS v(org_id, id, used) WHERE (t.org_id, t.id) = (v.org_id, v.id)",
        [[org, org, uuid.uuid4(), uuid.uuid4(), 1, 2]],
    )
    assert problems(pairs, org, {other}) == []
    listed = Statement("SELECT users.org_id FROM users WHERE users.id = $1", [[org]])
    assert problems(listed, org, {other}) == ["users: no org_id condition"]
    next_ids = Statement("SELECT coalesce(max(id), 0) FROM journal_entries", [[]])
    assert problems(next_ids, org, {other}, "sqlite") == []
    assert problems(next_ids, org, {other}, "postgresql") == [
        "journal_entries: no org_id condition"
    ]
    copied = Statement("COPY journal_entries (id, org_id) FROM STDIN", [[1, org], [2, other]])
    assert problems(copied, org, {other}) == [
        "binds another organization's id",
        "journal_entries: this organization's id is not bound",
    ]
    lock = Statement("SELECT pg_advisory_xact_lock_shared($1)", [[12345]])
    assert problems(lock, org, {other}) == []
