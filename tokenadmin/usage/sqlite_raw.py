"""The sqlite3 connection of a SQLite write transaction, for the metering engine.

Through SQLAlchemy, each statement of a metering group is a hand-off to aiosqlite's thread
and back (a queue, a thread woken, a callback scheduled on the event loop), and each
value bound or read goes through its column type's processing: on SQLite, where one
transaction writes at a time and a group's CPU is the whole limit, that cost more than
the engine's own deciding. Here the engine hands a plain function to aiosqlite's thread,
which sends several statements on the sqlite3 connection itself (`Connection.run`).

Values are spelled as SQLAlchemy's column types store them on SQLite, so a row written
here reads back identically through the ORM, and the other way round: a `Uuid` as its
32 hex digits, a `UTCDateTime` as its UTC time without an offset ("2026-05-01
12:00:00.000000", SQLAlchemy's storage format for SQLite), a `JSON` value as `json.dumps`
writes it (None as the text `null`, as SQLAlchemy's JSON type stores it).

The transaction stays the session's (its BEGIN IMMEDIATE was sent by `database`'s
listener): it commits or rolls back with it. A failure is raised as SQLAlchemy raises it
(a `DBAPIError` of the matching class wrapping sqlite3's error), so `Database.write`
retries a busy file, and the engine's `except IntegrityError` sees a key another
transaction stored first, as before.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, overload

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.database import as_sqlalchemy_raises

T = TypeVar("T")


class Statements:
    """What a function run in aiosqlite's thread sends its statements through: the one
    place they pass (tests/test_org_scoped_statements.py captures them here), which
    remembers the last one for the error raised should it fail."""

    __slots__ = ("connection", "sql")

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.sql = ""

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> sqlite3.Cursor:
        self.sql = sql
        return self.connection.execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.sql = sql
        self.connection.executemany(sql, rows)


class Connection:
    """The aiosqlite connection under a session's transaction."""

    __slots__ = ("adapted", "aio", "session")

    def __init__(self, adapted: Any, session: AsyncSession) -> None:
        self.adapted = adapted  # SQLAlchemy's adapter of the aiosqlite connection
        self.aio = adapted.driver_connection  # the aiosqlite connection
        self.session = session

    @classmethod
    async def of(cls, session: AsyncSession) -> Connection:
        """The connection of the session's transaction (begun by asking for it). Once it
        has begun, the pooled connection is at hand without I/O: read as it is, not through
        `get_raw_connection`, which spawns a greenlet to read it."""
        connection = (await session.connection()).sync_connection
        assert connection is not None
        return cls(connection.connection.dbapi_connection, session)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """`work(statements, *args)` in aiosqlite's thread, on its sqlite3 connection: one
        hand-off, however many statements `work` sends. Not behind the adapter's lock of
        its statements (SQLAlchemy's own use of the connection), which this needs no more
        than the adapter does: the write engine has one connection, its session's
        transaction is one task's, and aiosqlite runs what it is given in order."""
        aio = self.aio
        statements: Statements | None = None
        try:
            # `_conn` (the sqlite3 connection) and `_execute` (queue a function for the
            # connection's thread and await its result) are private to aiosqlite, but
            # what its own public methods are made of, unchanged since its first releases.
            statements = Statements(aio._conn)
            return cast(T, await aio._execute(work, statements, *args))
        except Exception as error:
            wrapped = self._wrapped(error, "" if statements is None else statements.sql)
            if wrapped is error:
                raise
            raise wrapped from error

    def _wrapped(self, error: Exception, sql: str) -> BaseException:
        return as_sqlalchemy_raises(self.adapted, self.session.get_bind().dialect, error, sql)


# --- values, as SQLAlchemy's column types store and read them on SQLite -------------------


def hex_of(value: uuid.UUID | None) -> str | None:
    """A `Uuid` column's value."""
    return None if value is None else value.hex


def stamp(value: datetime | None) -> str | None:
    """A `UTCDateTime` column's value (`models.base.UTCDateTime`, then SQLite's DATETIME)."""
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


class Stamps(dict[datetime | None, str | None]):
    """`stamp` of each distinct datetime once: a group's datetimes are mostly its moment."""

    def __missing__(self, value: datetime | None) -> str | None:
        spelled = self[value] = stamp(value)
        return spelled


def json_text(value: Any) -> str:
    """A `JSON` column's value: None is stored as JSON's `null`, as SQLAlchemy does."""
    return "null" if value is None else json.dumps(value)


@overload
def to_datetime(value: str) -> datetime: ...
@overload
def to_datetime(value: str | None) -> datetime | None: ...
def to_datetime(value: str | None) -> datetime | None:
    """A `UTCDateTime` column's value as the ORM reads it: aware, in UTC."""
    if value is None:
        return None
    read = datetime.fromisoformat(value)
    return read.replace(tzinfo=UTC) if read.tzinfo is None else read.astimezone(UTC)


def from_json(value: str | None) -> Any:
    return None if value is None else json.loads(value)
