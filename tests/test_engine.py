"""The metering engine (usage/engine.py): the same answers as the ORM path, in fewer
statements."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from functools import partial
from itertools import pairwise
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Row, Select, create_engine, event, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import get_user
from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database, is_transient
from tokenadmin.errors import Unavailable
from tokenadmin.idempotency.service import Answer
from tokenadmin.models import Base, JournalEntry, User
from tokenadmin.tokens import Kind
from tokenadmin.usage import engine, service, sqlite_raw
from tokenadmin.usage.endpoints import answer_of
from tokenadmin.usage.service import Caller, Operation

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Org:
    """An organization with three users (ana, bo deactivated, cy), metered by its key."""

    def __init__(self, db: Database, clock: FakeClock, org_id: str, caller: Caller) -> None:
        self.db, self.clock, self.org_id, self.caller = db, clock, org_id, caller
        self.users: dict[str, str] = {}  # name -> id

    async def run(self, *operations: Operation, skip_locked: bool = False) -> list[Answer]:
        return await service.run(
            self.db,
            self.clock,
            self.caller,
            operations,
            answer=answer_of,
            default_ttl=600,
            idempotency_ttl=timedelta(hours=24),
            skip_locked=skip_locked,
        )


async def _org(api: Api, db: Database, clock: FakeClock, *, binding: bool = False) -> Org:
    """With `binding`, 1,100,000 tokens bought for allowances of 1,800,000 (1,300,000 once
    bo is deactivated): the organization runs out before ana and cy do (SPEC rule 3)."""
    if binding:
        org_id = await funded_org(api, inference=1_100_000, overallocation=True)
    else:
        org_id = await funded_org(api, inference=10_000_000)
    key, _ = await db.write(
        lambda s: api_key_service.create(
            s, Act("test", clock.now()), org_id=uuid.UUID(org_id), name="k", scopes=["usage"]
        )
    )
    org = Org(db, clock, org_id, Caller("key:k", key.org_id, f"org:{org_id}", key.id))
    tag = uuid.uuid4().hex[:6]
    for name, allowance in (("ana", 1_000_000), ("bo", 500_000), ("cy", 300_000)):
        user = await api.user(org_id, f"{name}-{tag}@example.com", max_tokens=allowance)
        org.users[name] = user["id"]
    await api.post(f"/v1/users/{org.users['bo']}/deactivate", expect=200)
    return org


def usage(user: str, tokens: int, key: str | None = None, **details: Any) -> Operation:
    return Operation(
        "usage", user, Kind.inference, tokens, details=details or None, idempotency_key=key
    )


def reserve(user: str, tokens: int, key: str | None = None) -> Operation:
    return Operation("reserve", user, Kind.inference, tokens, ttl_seconds=60, idempotency_key=key)


async def _scenario(org: Org) -> list[list[Answer]]:
    """Groups touching every rule the engine decides, and some it hands over."""
    ana, bo, cy = (org.users[name] for name in ("ana", "bo", "cy"))
    email = await org.db.read(lambda s: s.get(User, uuid.UUID(ana)))
    assert email is not None
    groups = [
        await org.run(usage(ana, 100_000, "k1", dataset="docs"), usage(cy, 200_000, "k2")),
        await org.run(
            usage(ana, 100_000, "k1", dataset="docs"),  # replayed
            usage(ana, 99_900, "k1"),  # the same key for another request
            usage(email.email.upper(), 700_000, "k3"),  # by email: reaches 80% and 90%...
            usage(ana, 250_000, "k4"),  # ...insufficient
            usage(bo, 1_000, "k5"),  # deactivated
            usage(str(uuid.uuid4()), 10, "k6"),  # no such user
            usage("nobody@example.com", 10),
            usage(cy, 50_000, "k7"),
            usage(cy, 50_000, "k7"),  # the same key twice in a group
        ),
        await org.run(
            reserve(cy, 40_000, "r1"), reserve(cy, 10_000, "r2"), reserve(ana, 500_000, "r3")
        ),
    ]
    held = [answer.body.get("id") for answer in groups[-1] if answer.status_code == 201]
    first, second = (uuid.UUID(h) for h in held)
    groups += [
        await org.run(
            Operation("commit", reservation_id=first, tokens=45_000, idempotency_key="c0"),  # over
            Operation("commit", reservation_id=first, tokens=35_000, idempotency_key="c1"),
            Operation("release", reservation_id=second, idempotency_key="c2"),
            Operation("release", reservation_id=first, idempotency_key="c3"),  # closed
            Operation("commit", reservation_id=uuid.uuid4(), idempotency_key="c4"),
        ),
        await org.run(usage(cy, 10_000, "k8"), reserve(cy, 100, "r4"), usage(ana, 1)),
        # more than cy has while holding a reservation: the ORM path (expiries first)
        await org.run(usage(cy, 50_000, "k9"), usage(ana, 1)),
        # charged at the rates (the ORM path), then usage while holding a reservation
        await org.run(
            Operation(
                "usage",
                ana,
                Kind.inference,
                None,
                details={"prompt_tokens": 10, "completion_tokens": 5},
            ),
        ),
    ]
    return groups


def _normalized(org: Org, groups: list[list[Answer]], entry_ids: list[int]) -> str:
    """The answers, with what differs between two organizations named by position."""
    text = json.dumps(
        [[(a.status_code, a.replayed, a.body) for a in group] for group in groups], sort_keys=True
    )
    for name, user_id in org.users.items():
        text = text.replace(user_id, name)
    text = re.sub(r"(ana|bo|cy)-[0-9a-f]{6}@example\.com", r"\1@", text, flags=re.IGNORECASE)
    position = {entry_id: n for n, entry_id in enumerate(entry_ids)}
    text = re.sub(r'"journal_entry_id": (\d+)', lambda m: f'"#{position[int(m.group(1))]}"', text)
    seen: dict[str, str] = {}
    return UUID.sub(lambda m: seen.setdefault(m.group(0), f"R{len(seen)}"), text)


async def _journal(db: Database, org_id: str) -> list[tuple[Any, ...]]:
    async def read(session: AsyncSession) -> list[tuple[Any, ...]]:
        statement = (
            select(JournalEntry)
            .where(JournalEntry.org_id == uuid.UUID(org_id))
            .order_by(JournalEntry.id)
        )
        return [
            (
                e.id,
                e.action,
                e.kind,
                e.amount,
                e.used_delta,
                e.reserved_delta,
                e.used_after,
                e.reserved_after,
                e.allowance_after,
                e.details,
                e.actor,
            )
            for e in (await session.scalars(statement)).all()
        ]

    return await db.read(read)


@contextmanager
def orm_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with monkeypatch.context() as patched:
        patched.setattr(engine, "takes", lambda caller, operations: False)
        yield


@pytest.mark.parametrize("binding", [False, True], ids=["within-capacity", "capacity-binds"])
async def test_the_engine_answers_and_journals_as_the_orm_path(
    api: Api, db: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, binding: bool
) -> None:
    by_engine = await _org(api, db, clock, binding=binding)
    by_orm = await _org(api, db, clock, binding=binding)
    by_meter: list[int] = []  # the groups the ORM path metered, of the engine's run
    meter = service.meter

    async def counted(*args: Any, **kwargs: Any) -> Any:
        by_meter.append(1)
        return await meter(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(service, "meter", counted)
        engine_answers = await _scenario(by_engine)
    with orm_only(monkeypatch):
        orm_answers = await _scenario(by_orm)

    engine_journal = await _journal(db, by_engine.org_id)
    orm_journal = await _journal(db, by_orm.org_id)
    metering = {"usage", "reserve", "commit", "release", "reservation_expired"}
    assert [row[1:] for row in engine_journal if row[1] in metering] == [
        row[1:] for row in orm_journal if row[1] in metering
    ]
    engine_text = _normalized(by_engine, engine_answers, [row[0] for row in engine_journal])
    orm_text = _normalized(by_orm, orm_answers, [row[0] for row in orm_journal])
    assert engine_text == orm_text
    for code in (
        "insufficient_tokens",
        "user_deactivated",
        "user_not_found",
        "reservation_closed",
        "reservation_not_found",
        "idempotency_key_reused",
    ):
        assert code in engine_text
    # The ORM path took the group charged at the rates and the one whose user holds a
    # reservation (its overdue ones expire first); where the capacity binds, also the
    # first group, which sums the users once for the organization's running totals.
    assert len(by_meter) == (3 if binding else 2)
    if binding:
        assert engine_text.count('"limited_by": "organization"') == 3, engine_text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rows_written_on_sqlite_are_stored_as_sqlalchemy_stores_them(
    api: Api, db: Database, clock: FakeClock
) -> None:
    """The engine writes SQLite's rows itself (`sqlite_raw`): each is stored as SQLAlchemy
    stores the values the ORM reads back from it (a UUID's hex digits, a datetime's text,
    JSON's `null`), so the two paths store the same bytes and `verify` reads both alike;
    and what it stores is what was metered (a moment's microseconds, text beyond ASCII)."""
    org = await _org(api, db, clock)
    await _scenario(org)
    moment = clock.advance(microseconds=123_457)
    note = {"note": "café ☕", "none": None, "nested": {"list": [1, None, "ü"]}}
    [answer] = await org.run(usage(org.users["ana"], 7, "k-details", **note))
    assert answer.status_code == 200, answer.body
    org_id = uuid.UUID(org.org_id)
    tables: dict[str, tuple[str, uuid.UUID | str, str]] = {
        "journal_entries": ("org_id", org_id, "id"),
        "reservations": ("org_id", org_id, "id"),
        "users": ("org_id", org_id, "id"),
        "idempotency_records": ("scope", f"org:{org_id}", "key"),
    }
    path = db.engine.url.database
    assert path is not None
    copy = create_engine("sqlite://")
    Base.metadata.create_all(copy)
    for name, (column, value, order) in tables.items():
        table = Base.metadata.tables[name]
        columns = ", ".join(table.c.keys())
        query = f"SELECT {columns} FROM {name} WHERE {column} = ? ORDER BY {order}"
        bound = value.hex if isinstance(value, uuid.UUID) else value
        with closing(sqlite3.connect(path)) as stored:
            written = stored.execute(query, (bound,)).fetchall()

        chosen = select(table).where(table.c[column] == value).order_by(table.c[order])
        read_back = [dict(row._mapping) for row in await db.read(partial(_rows, chosen))]
        with copy.begin() as connection:
            connection.execute(insert(table), read_back)
            again = connection.exec_driver_sql(query, (bound,)).fetchall()
        assert len(written) >= 3, name
        assert written == again, name
    # The stored text itself, against what the values spell: not only its format.
    entry_id = answer.body["journal_entry_id"]
    with closing(sqlite3.connect(path)) as stored:
        created, details = stored.execute(
            "SELECT created_at, details FROM journal_entries WHERE id = ?", (entry_id,)
        ).fetchone()
    assert created == moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    assert created.endswith(".123457")
    assert json.loads(details) == note
    assert details == json.dumps(note)  # as SQLAlchemy's JSON type writes it: ASCII escapes


async def _rows(statement: Select[Any], session: AsyncSession) -> Sequence[Row[Any]]:
    rows: Sequence[Row[Any]] = (await session.execute(statement)).all()
    return rows


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_failure_on_sqlites_own_connection_is_raised_as_sqlalchemy_raises_it(
    db: Database,
) -> None:
    """The engine's statements on sqlite3's connection fail as they would through
    SQLAlchemy, so `Database.write` retries a busy file and the engine tells a key stored
    first; its own Python errors pass as they are."""
    lease = "INSERT INTO job_leases (name, next_due_at, runs) VALUES ('x', '2026-01-01', 0)"

    def twice(statements: sqlite_raw.Statements) -> None:
        statements.execute(lease)
        statements.execute(lease)

    def busy(statements: sqlite_raw.Statements) -> None:
        raise sqlite3.OperationalError("database is locked")

    def broken(statements: sqlite_raw.Statements) -> None:
        raise KeyError("a bug")

    async with db.session() as session, session.begin():
        lite = await sqlite_raw.Connection.of(session)
        with pytest.raises(IntegrityError) as duplicate:
            await lite.run(twice)
        assert isinstance(duplicate.value.orig, sqlite3.IntegrityError)
        assert "job_leases" in str(duplicate.value.orig)
        assert duplicate.value.statement == lease
        with pytest.raises(OperationalError) as locked:
            await lite.run(busy)
        assert is_transient(locked.value)
        with pytest.raises(KeyError):
            await lite.run(broken)
        await session.rollback()


@dataclass
class Sent:
    """What the metering path sent: the statements through SQLAlchemy, and those the engine
    sends itself (PostgreSQL: on asyncpg's connection, `engine._Raw`; SQLite: on sqlite3's,
    in aiosqlite's thread, `sqlite_raw.Statements`), and its hand-offs to aiosqlite's thread
    (`sqlite_raw.Connection.run`)."""

    through_sqlalchemy: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    hand_offs: int = 0


@contextmanager
def statements(db: Database) -> Iterator[Sent]:
    sent = Sent()

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.through_sqlalchemy.append(statement)

    fetch = engine._Raw.fetch

    async def noted(raw: engine._Raw, statement: str, parameters: dict[str, Any]) -> list[Any]:
        sent.raw.append(statement)
        return await fetch(raw, statement, parameters)

    execute, executemany = sqlite_raw.Statements.execute, sqlite_raw.Statements.executemany

    def executed(self: sqlite_raw.Statements, sql: str, parameters: Any = ()) -> Any:
        sent.raw.append(sql)
        return execute(self, sql, parameters)

    def executed_many(self: sqlite_raw.Statements, sql: str, rows: Any) -> None:
        sent.raw.append(sql)
        executemany(self, sql, rows)

    run = sqlite_raw.Connection.run

    async def handed_off(self: sqlite_raw.Connection, work: Any, *args: Any) -> Any:
        sent.hand_offs += 1
        return await run(self, work, *args)

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    engine._Raw.fetch = noted  # type: ignore[method-assign,assignment]
    sqlite_raw.Statements.execute = executed  # type: ignore[method-assign]
    sqlite_raw.Statements.executemany = executed_many  # type: ignore[method-assign]
    sqlite_raw.Connection.run = handed_off  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        engine._Raw.fetch = fetch  # type: ignore[method-assign]
        sqlite_raw.Statements.execute = execute  # type: ignore[method-assign]
        sqlite_raw.Statements.executemany = executemany  # type: ignore[method-assign]
        sqlite_raw.Connection.run = run  # type: ignore[method-assign]
        event.remove(db.engine.sync_engine, "before_cursor_execute", note)


async def test_a_group_is_metered_in_three_statements_on_postgresql_two_hand_offs_on_sqlite(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org = await _org(api, db, clock)
    ana, cy = org.users["ana"], org.users["cy"]
    # Statements prepared; both users active this minute, so neither's last activity moves
    # (SQLite writes it in a statement of its own when it does).
    await org.run(usage(ana, 1), usage(cy, 1))

    with statements(db) as sent:
        answers = await org.run(*(usage(ana if n % 2 else cy, 1, f"n{n}") for n in range(50)))

    assert {a.status_code for a in answers} == {200}
    through_sqlalchemy = [s for s in sent.through_sqlalchemy if not s.startswith("BEGIN")]
    if db.dialect == "postgresql":
        # Lock, key and idempotency keys; users and journal ids; every write.
        assert len(through_sqlalchemy + sent.raw) == 3, sent
        return
    # The key, the idempotency keys and the users in one hand-off to aiosqlite's thread;
    # the last journal id and one executemany per table written in another.
    assert through_sqlalchemy == [], sent
    assert len(sent.raw) == 7, sent
    assert sent.hand_offs == 2, sent


async def test_a_users_last_activity_moves_at_most_once_a_minute(
    api: Api, db: Database, clock: FakeClock
) -> None:
    """In one group, a user whose last activity moves and one whose does not (SQLite
    writes the two in different statements): both counters are written, and the last
    activity only where a minute has passed."""
    org = await _org(api, db, clock)
    ana, cy = org.users["ana"], org.users["cy"]
    start = clock.now()
    await org.run(usage(ana, 1), usage(cy, 1))
    clock.advance(seconds=61)
    await org.run(usage(ana, 1))
    clock.advance(seconds=29)
    await org.run(usage(ana, 1), usage(cy, 1))

    async def read(session: AsyncSession) -> dict[str, tuple[int, Any]]:
        found = {}
        for name, user_id in (("ana", ana), ("cy", cy)):
            user = await session.get(User, uuid.UUID(user_id))
            assert user is not None
            found[name] = (user.inference_used, user.last_activity_at)
        return found

    assert await db.read(read) == {
        "ana": (3, start + timedelta(seconds=61)),
        "cy": (2, start + timedelta(seconds=90)),
    }


async def test_entries_are_chained_in_id_order_and_refusals_leave_only_gaps(
    api: Api, db: Database, clock: FakeClock
) -> None:
    """Ids are taken for every operation of a group with its users' locks (PostgreSQL);
    those of refused operations stay unused, and each user's chain still runs in id order."""
    org = await _org(api, db, clock)
    ana, cy = org.users["ana"], org.users["cy"]
    answers = await org.run(
        usage(ana, 1, "g1"),
        usage(ana, 10**9, "g2"),  # insufficient
        usage(cy, 1, "g3"),
        usage(str(uuid.uuid4()), 1, "g4"),  # no such user
        usage(ana, 2, "g5"),
    )
    assert [a.status_code for a in answers] == [200, 402, 200, 404, 200]
    ids = [answers[n].body["journal_entry_id"] for n in (0, 2, 4)]
    assert ids == sorted(ids)
    later = (await org.run(usage(cy, 3, "g6")))[0].body["journal_entry_id"]
    assert later > ids[-1]
    if db.dialect == "postgresql":
        assert later - ids[0] == 5  # the two refused operations' ids were not used

    async def chains(session: AsyncSession) -> dict[uuid.UUID, list[tuple[str | None, str | None]]]:
        statement = (
            select(JournalEntry.user_id, JournalEntry.prev_hash, JournalEntry.hash)
            .where(JournalEntry.org_id == uuid.UUID(org.org_id))
            .order_by(JournalEntry.id)
        )
        found: dict[uuid.UUID, list[tuple[str | None, str | None]]] = {}
        for user_id, prev_hash, entry_hash in await session.execute(statement):
            if user_id is not None:
                found.setdefault(user_id, []).append((prev_hash, entry_hash))
        return found

    for user_id, links in (await db.read(chains)).items():
        for (_, before), (prev_hash, _) in pairwise(links):
            assert prev_hash == before, user_id


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_begin_that_fails_for_a_lost_database_answers_unavailable(
    api: Api, db: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction begins on asyncpg's connection as the pool gives it out (the engine
    would begin it itself otherwise): a BEGIN cut off from the database is raised as
    SQLAlchemy raises it, so it answers 503, never 500."""
    org = await _org(api, db, clock)
    adapter = type(await _raw_adapter(db))

    async def lost(connection: Any) -> None:
        connection._handle_exception(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))

    monkeypatch.setattr(adapter, "_start_transaction", lost)
    with pytest.raises(Unavailable):
        await org.run(usage(org.users["ana"], 1, "lost"))
    monkeypatch.undo()
    assert [a.status_code for a in await org.run(usage(org.users["ana"], 1, "lost"))] == [200]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_pooled_connection_is_not_pinged_before_its_transaction(
    api: Api, db: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's pre-ping costs three round trips on asyncpg; the transaction's own
    BEGIN checks the connection instead (test_outage: cut connections are replaced)."""
    org = await _org(api, db, clock)
    adapter = type(await _raw_adapter(db))

    def ping(connection: Any) -> None:
        raise AssertionError("pinged")

    monkeypatch.setattr(adapter, "ping", ping)
    answers = [await org.run(usage(org.users["ana"], 1, f"p{n}")) for n in range(3)]
    assert [a.status_code for group in answers for a in group] == [200, 200, 200]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_batch_leaves_the_users_locked_elsewhere_to_a_later_transaction(
    api: Api, db: Database, clock: FakeClock
) -> None:
    """A batch (`skip_locked`) whose user another transaction has locked commits its other
    users' events without waiting; that user's events follow, in their order, once the
    lock is let go. Every event is answered as in one transaction, keys and all."""
    org, same = await _org(api, db, clock), await _org(api, db, clock)
    nobody = str(uuid.uuid4())

    async def batch(org: Org, **run: Any) -> list[Answer]:
        ana, bo, cy = (org.users[name] for name in ("ana", "bo", "cy"))
        cy_email = (await get_user(api, cy))["email"].upper()
        return await org.run(
            usage(cy, 2, "b1"),
            usage(ana, 1, "b2"),
            usage(cy_email, 3, "b3"),  # cy by email
            usage(cy, 2, "b1"),  # the first event again: its answer
            usage(cy, 5, "b1"),  # its key, another body: refused
            usage(bo, 1, "b4"),  # deactivated
            usage(nobody, 1, "b5"),  # no such user
            usage(ana, 4, "b6"),
            usage(cy, 10**9, "b7"),  # more than cy has
            **run,
        )

    async def used(user_id: str) -> int:
        return int((await get_user(api, user_id))["inference"]["used"])

    async def waiting_on_a_lock() -> bool:
        statement = text(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(await db.read(lambda s: s.scalar(statement)))

    async with db.engine.connect() as holder:
        await holder.execute(
            text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": org.users["cy"]}
        )
        metering = asyncio.create_task(batch(org, skip_locked=True))
        deadline = asyncio.get_running_loop().time() + 60
        while not await waiting_on_a_lock():  # for cy, its last transaction
            assert not metering.done(), metering.result()
            assert asyncio.get_running_loop().time() < deadline, "the batch never waited"
            await asyncio.sleep(0.01)
        # ana's events are committed while cy's wait.
        assert (await used(org.users["ana"]), await used(org.users["cy"])) == (5, 0)
        await holder.rollback()
    answers = await metering

    alone = await batch(same)  # in one transaction, nothing locked elsewhere
    assert _normalized(org, [answers], _entry_ids(answers)) == _normalized(
        same, [alone], _entry_ids(alone)
    )
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 422, 409, 404, 200, 402]
    assert answers[3].replayed
    assert answers[3].body == answers[0].body
    assert (await used(org.users["ana"]), await used(org.users["cy"])) == (5, 5)
    ids = [answers[n].body["journal_entry_id"] for n in (1, 7, 0, 2)]  # ana's, then cy's
    assert ids == sorted(ids)
    again = await batch(org, skip_locked=True)
    assert [(a.status_code, a.body) for a in again] == [(a.status_code, a.body) for a in answers]
    assert all(a.replayed for a in again if a.status_code in (200, 402))
    assert (await used(org.users["ana"]), await used(org.users["cy"])) == (5, 5)


def _entry_ids(answers: list[Answer]) -> list[int]:
    """The journal entries the answers name, in the order they name them."""
    return [a.body["journal_entry_id"] for a in answers if "journal_entry_id" in a.body]


async def _raw_adapter(db: Database) -> Any:
    async with db.engine.connect() as connection:
        return (await connection.get_raw_connection()).dbapi_connection
