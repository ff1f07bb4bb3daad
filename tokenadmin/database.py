"""Engines, sessions and the one commit point.

Every change runs inside `Database.write(fn)`: `fn` gets a session inside a transaction,
services do their work without committing, and the transaction commits once when `fn`
returns (or rolls back when it raises). It is the one place a transaction is tried again:
on transient failures (deadlocks, serialization failures, a busy SQLite file), and when the
work asks for it by raising `Retry` (an idempotency key another transaction stored first,
an organization that needs its upkeep first), so neither reaches a caller.

SQLite: one writer connection per process (`BEGIN IMMEDIATE`, so writers queue instead of
failing), WAL journal with `synchronous=FULL`: an acknowledged write is on disk.
PostgreSQL: READ COMMITTED, row locks, and per-organization advisory locks (see
`lock_organization`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InvalidatePoolError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_

from tokenadmin.errors import Conflict, Unavailable

T = TypeVar("T")
log = logging.getLogger("tokenadmin.database")

TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}
# The database can't be reached or won't take the connection: connection failures (class
# 08, but not 08P01, a protocol violation: a bug), the server shutting down or starting up
# (57P01-57P03), no connection slot free (53300).
UNREACHABLE_SQLSTATES = {
    "08000",
    "08001",
    "08003",
    "08004",
    "08006",
    "57P01",
    "57P02",
    "57P03",
    "53300",
}
UNREACHABLE = (
    "The database can't be reached just now. Send the request again in a moment; sent with"
    " the same Idempotency-Key, a write is applied at most once."
)
MAX_ATTEMPTS = 12


class Retry(Exception):
    """Raised by a transaction's work when the same work tried again will get further: the
    transaction rolls back, `first` (if given) runs in a transaction of its own, and the work
    runs again (`Database.write`)."""

    def __init__(
        self, reason: str, first: Callable[[AsyncSession], Awaitable[Any]] | None = None
    ) -> None:
        super().__init__(reason)
        self.first = first


GAVE_UP = "The request could not be applied; send it again with the same idempotency key."


def async_url(url: str) -> str:
    """Accept the URLs people write (sqlite:///file.db, postgresql://...) and pick async drivers."""
    if url.startswith(("postgres://", "postgresql://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.split("://", 1)[1]
    return url


def _sqlstate(error: DBAPIError) -> str | None:
    orig = error.orig
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(orig, attribute, None)
        if isinstance(value, str):
            return value
    cause = getattr(orig, "__cause__", None)
    value = getattr(cause, "sqlstate", None)
    return value if isinstance(value, str) else None


def is_transient(error: DBAPIError) -> bool:
    if _sqlstate(error) in TRANSIENT_SQLSTATES:
        return True
    return isinstance(error, OperationalError) and "database is locked" in str(error.orig)


def is_unreachable(error: Exception) -> bool:
    """Whether `error` says the database is down or the connection to it was lost (not that
    a statement was wrong): answered 503, and the client sends the request again."""
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        return _sqlstate(error) in UNREACHABLE_SQLSTATES
    # Refused or timed out while connecting; no pooled connection free in time.
    return isinstance(error, OSError | PoolTimeout)


@asynccontextmanager
async def _answering_unreachable() -> AsyncIterator[None]:
    """Turn a lost database into `Unavailable` (503 `unavailable`), never a 500. A write
    whose connection broke may or may not have committed: the client's resend with the same
    idempotency key answers either way, and applies it at most once."""
    try:
        yield
    except (DBAPIError, OSError, PoolTimeout) as error:
        if is_unreachable(error):
            log.warning("database unreachable: %s", error)
            raise Unavailable(UNREACHABLE) from error
        raise


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = self._sqlite_engine(write=True)
            self.read_engine = self._sqlite_engine(write=False)
        else:
            self.engine = create_async_engine(self.url, pool_size=pool_size, max_overflow=pool_size)
            _begin_on_checkout(self.engine)
            self.read_engine = self.engine
        self._write_sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)

    def _sqlite_engine(self, *, write: bool) -> AsyncEngine:
        options: dict[str, Any] = {"connect_args": {"timeout": 30}}
        if write:
            # One connection: writers in this process queue for it instead of for the file lock.
            options.update(pool_size=1, max_overflow=0, pool_timeout=120)
        engine = create_async_engine(self.url, **options)
        begin = "BEGIN IMMEDIATE" if write else "BEGIN"

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection: Any) -> None:
            connection.exec_driver_sql(begin)

        return engine

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()

    async def write(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` in one transaction and commit once; run it again after a transient
        failure or a `Retry`. Out of attempts, a `Retry` answers 409 `retry`."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with (
                    _answering_unreachable(),
                    self._write_sessions() as session,
                    session.begin(),
                ):
                    return await work(session)
            except Retry as retry:
                if attempt == MAX_ATTEMPTS:
                    raise Conflict(GAVE_UP, code="retry", status_code=409) from retry
                if retry.first is not None:
                    await self.write(retry.first)
            except DBAPIError as error:
                if not is_transient(error) or attempt == MAX_ATTEMPTS:
                    raise
                log.info("retrying transaction after %s (attempt %d)", error.orig, attempt)
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    async def read(
        self, work: Callable[[AsyncSession], Awaitable[T]], *, snapshot: bool = False
    ) -> T:
        """Run `work` in a read transaction (see `reading`)."""
        async with self.reading(snapshot=snapshot) as session:
            return await work(session)

    @asynccontextmanager
    async def reading(self, *, snapshot: bool = False) -> AsyncIterator[AsyncSession]:
        """A read transaction that can span a streamed answer. With `snapshot`, every
        statement sees the same moment (PostgreSQL REPEATABLE READ, read only; a SQLite read
        transaction already does)."""
        if snapshot and not self.is_sqlite:
            async with _answering_unreachable(), self.read_engine.connect() as connection:
                await connection.execution_options(
                    isolation_level="REPEATABLE READ", postgresql_readonly=True
                )
                async with AsyncSession(bind=connection) as session, session.begin():
                    yield session
            return
        async with _answering_unreachable(), self._read_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A bare session for scripts and tests that manage their own transaction."""
        async with self._write_sessions() as session:
            yield session


def as_sqlalchemy_raises(adapted: Any, dialect: Any, error: Exception, sql: str) -> BaseException:
    """A driver's `error`, met on a connection used around SQLAlchemy (the metering
    engine's asyncpg and sqlite3 statements), as SQLAlchemy raises it: translated by its
    adapter of the connection (`adapted`), in a `DBAPIError` of the matching class, so
    `Database.write` retries or answers 503 as it would. Any other exception (the
    caller's own Python) is returned as it is."""
    try:
        adapted._handle_exception(error)
    except Exception as translated:
        dbapi_error = adapted.dbapi.Error
        if not isinstance(translated, dbapi_error):
            return translated
        wrapped: BaseException = DBAPIError.instance(
            sql,
            None,
            translated,
            dbapi_error,
            connection_invalidated=dialect.is_disconnect(translated, None, None),
            dialect=dialect,
        )
        return wrapped
    raise AssertionError("the adapter raises")


_FRESH = "tokenadmin.fresh"


def _begin_on_checkout(engine: AsyncEngine) -> None:
    """Begin each PostgreSQL transaction as its connection is taken from the pool, and let
    that BEGIN be the check that the pooled connection still works.

    A connection the database cut (a restart, a failover) must be replaced, not answered
    with: SQLAlchemy's pre-ping does it, but on asyncpg its ping is a BEGIN, a statement
    and a ROLLBACK, three round trips before every transaction's own BEGIN, where a
    metering transaction's own are five. The transaction's own BEGIN tells as much: one
    that fails because the connection is closed has the pool drop its connections and
    reconnect, as a failed ping does, and the work never sees it. A new connection is not
    checked (as the pre-ping does not): its BEGIN's failure is raised as connecting's is,
    so it answers 503. The adapter then sends no BEGIN of its own; a connection set to
    another isolation level (a snapshot read, autocommit) rolls this one back first.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        fresh = record.info.pop(_FRESH, False)
        if dbapi_connection._transaction is not None:
            return
        try:
            await_(dbapi_connection._start_transaction())
        except dbapi_connection.dbapi.Error as error:
            dialect = engine.sync_engine.dialect
            if not fresh and dialect.is_disconnect(error, dbapi_connection, None):
                raise InvalidatePoolError() from error
            raise


def lock_key(org_id: uuid.UUID) -> int:
    return int.from_bytes(org_id.bytes[8:], "big", signed=True)


async def lock_organization(session: AsyncSession, org_id: uuid.UUID, *, shared: bool) -> None:
    """Serialize changes of an organization's token state against its metering.

    Metering takes the lock shared, so requests of one organization never wait for each
    other here; changes of allowances, purchases and policy take it exclusive, so the
    metering that decided whether the organization's capacity binds (SPEC rule 3) always
    saw the state it commits against. On SQLite the writer lock already serializes.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await session.execute(text(f"SELECT {function}(:key)"), {"key": lock_key(org_id)})
