"""Idempotency keys: the same key and body answer the first answer again and change nothing.

Every keyed write goes through one path: `write_group` in the write's transaction (one
request or a group of many, as metering sends), and `write_once` around it for a single
write. A record holds the first answer (success or refusal) and is written in the same
transaction as the change it describes, so a change and its record commit together or not
at all. Keys in flight are refused with 409: in this process by `KeysInFlight`, across
processes by `claim`. A key another transaction stored first makes the transaction raise
`Retry`, and `Database.write`, the one retry loop, runs it again to replay that answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Generic, NamedTuple, TypeAlias, TypeVar, cast

from sqlalchemy import Delete, Table, any_, delete, func, literal_column, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import ColumnClause

from tokenadmin import compact_json
from tokenadmin.clock import Clock
from tokenadmin.database import Database, Retry
from tokenadmin.errors import (
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    InvalidRequest,
    TokenAdminError,
)
from tokenadmin.models import IdempotencyRecord
from tokenadmin.rows import insert_many

T = TypeVar("T")
RECORDS = cast(Table, IdempotencyRecord.__table__)

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Answer:
    """What a request was answered, as it is kept for replays: its status and its body.

    `encoded`, when its maker gives it, is the body as compact JSON: the same bytes are then
    sent and kept (`remembered`) instead of being written twice."""

    status_code: int
    body: dict[str, Any]
    replayed: bool = False
    encoded: bytes | None = field(default=None, compare=False, repr=False)


class Keyed(NamedTuple):
    """A request's idempotency key and the fingerprint of what it asks."""

    key: str
    fingerprint: str


Render = Callable[[T], Answer]
"""How the caller answers a result: its status code and body (kept for replays)."""
Outcome: TypeAlias = T | TokenAdminError
"""A result, or the refusal that took its place."""

DENIED = frozenset({401, 403, 404})
# Refusals of the key itself, or of this attempt: never an answer to keep.
NOT_KEPT = frozenset(
    {"idempotency_key_reused", "invalid_idempotency_key", "idempotency_key_in_flight", "retry"}
)


def kept(answer_status: int) -> bool:
    """Whether an answer is remembered: a denied request (the caller may not act, or the
    object is not theirs) leaves no trace, so it can't change anything, not even a key;
    nor does a server-side failure (503: the database out of reach), which the client
    sends again with the same key to have the request applied then."""
    return answer_status not in DENIED and answer_status < 500


def refused(error: TokenAdminError) -> Answer:
    """A refusal's answer: the one body every interface gives for an error."""
    return Answer(error.status_code, error.to_dict())


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency keys are 1 to {MAX_KEY_LENGTH} printable characters.",
            code="invalid_idempotency_key",
        )
    return key


def fingerprint(*parts: Any) -> str:
    """The SHA-256 of the parts as `json.dumps(parts, sort_keys=True, separators=(",", ":"),
    default=str)` writes them: stored with each key, so the text must never change."""
    return hashlib.sha256("".join(_canonical(parts, 0)).encode()).hexdigest()


_canonical = compact_json.encoder(ensure_ascii=True, default=str)


def reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"The idempotency key '{key}' was already used for a different request;"
        " use a new key for a new request.",
        details={"idempotency_key": key},
    )


def in_flight(key: str) -> IdempotencyKeyInFlight:
    return IdempotencyKeyInFlight(
        f"A request with the idempotency key '{key}' is being applied right now;"
        " send it again in a moment to get its answer.",
        details={"idempotency_key": key},
    )


# --- the records ----------------------------------------------------------------------------


class Stored(NamedTuple):
    """A kept answer, as `find` reads it."""

    key: str
    fingerprint: str
    status_code: int
    response: str


# One index probe per key (a nested loop over the keys), whatever the planner's statistics
# say: with stale statistics `key IN (…)`, or a join, may become a scan of every key of the
# scope. The LIMIT keeps the planner from flattening the LATERAL subquery into a join.
PROBE = text(
    "SELECT r.key, r.fingerprint, r.status_code, r.response"
    " FROM unnest(CAST(:keys AS text[])) AS k(key)"
    " CROSS JOIN LATERAL (SELECT s.key, s.fingerprint, s.status_code, s.response"
    " FROM idempotency_records AS s WHERE s.scope = :scope AND s.key = k.key LIMIT 1) AS r"
)
_SELECT_STORED = select(
    RECORDS.c.key, RECORDS.c.fingerprint, RECORDS.c.status_code, RECORDS.c.response
)


async def find(session: AsyncSession, scope: str, keys: Sequence[str]) -> dict[str, Stored]:
    """The kept answers of these keys of `scope`, by key."""
    if not keys:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        rows = await session.execute(PROBE, {"keys": list(keys), "scope": scope})
        return {row[0]: Stored(*row) for row in rows}
    found: dict[str, Stored] = {}
    for start in range(0, len(keys), 1000):
        statement = _SELECT_STORED.where(
            RECORDS.c.scope == scope, RECORDS.c.key.in_(keys[start : start + 1000])
        )
        found.update({row[0]: Stored(*row) for row in await session.execute(statement)})
    return found


def replay(record: Stored, print_: str) -> Answer:
    if record.fingerprint != print_:
        raise reused(record.key)
    return Answer(record.status_code, json.loads(record.response), replayed=True)


def remembered(
    scope: str, key: str, print_: str, answer: Answer, now: datetime, ttl: timedelta
) -> dict[str, Any]:
    """The record that keeps `answer` for replays of `key`, as a row for `remember`."""
    encoded = answer.encoded
    return {
        "scope": scope,
        "key": key,
        "fingerprint": print_,
        "status_code": answer.status_code,
        "response": (
            json.dumps(answer.body, separators=(",", ":")) if encoded is None else encoded.decode()
        ),
        "created_at": now,
        "expires_at": now + ttl,
    }


async def remember(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Store records (from `remembered`) in this transaction, in one statement.

    A key another transaction stored first raises `Retry`: the transaction runs again and
    replays that transaction's answer."""
    if not rows:
        return
    try:
        await session.run_sync(insert_many, RECORDS, rows)
    except IntegrityError as error:
        raise Retry("an idempotency key was stored by another transaction first") from error


PURGE_CHUNK = 5_000  # expired keys forgotten a transaction


async def purge(session: AsyncSession, now: datetime, *, limit: int = PURGE_CHUNK) -> int:
    """Forget at most `limit` keys whose time to live has passed, the first to expire first;
    how many. The sweeper calls this until fewer than `limit` are left, so a backlog goes
    in short transactions."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        await session.execute(PURGE_PLAN)
    result = await session.execute(purging(now, limit, dialect))
    return int(getattr(result, "rowcount", 0) or 0)


# For the rest of the purge's transaction: the expiry index read in order is the only plan.
# When the statistics are stale (a table analyzed while it was small, or full of dead rows)
# the planner can believe it tiny and choose to read all of it, or every expired key, and
# sort, however many there are.
PURGE_PLAN = text(
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)


def purging(now: datetime, limit: int, dialect: str) -> Delete:
    """`purge`'s statement: the rows found by reading the index on `expires_at` in order
    and stopping after `limit` (on PostgreSQL with `PURGE_PLAN`), then deleted by their
    physical address (PostgreSQL's ctid, SQLite's rowid). A bare
    `DELETE … WHERE expires_at < now`, or one matching the keys found, can be planned as a
    read of every remembered key when the statistics are stale."""
    row: ColumnClause[Any] = literal_column("ctid" if dialect == "postgresql" else "rowid")
    expired = (
        select(row)
        .select_from(RECORDS)
        .where(RECORDS.c.expires_at < now)
        .order_by(RECORDS.c.expires_at)
        .limit(limit)
    )
    if dialect == "postgresql":  # a TID scan of the array of addresses
        return delete(RECORDS).where(row == any_(func.array(expired.scalar_subquery())))
    return delete(RECORDS).where(row.in_(expired))


# --- keys in flight -------------------------------------------------------------------------


class KeysInFlight:
    """The keys being applied in this process (API writes and metering alike): a second
    request with one of them is answered 409 at once instead of queueing behind the first.
    Across processes, `claim` tells the same in the transaction."""

    def __init__(self) -> None:
        self._held: set[tuple[str, str]] = set()

    def take(self, scope: str, key: str) -> None:
        if (scope, key) in self._held:
            raise in_flight(key)
        self._held.add((scope, key))

    def give_back(self, scope: str, keys: Iterable[str | None]) -> None:
        for key in keys:
            self._held.discard((scope, key or ""))

    @contextmanager
    def holding(self, scope: str, key: str) -> Iterator[None]:
        self.take(scope, key)
        try:
            yield
        finally:
            self.give_back(scope, [key])


# PostgreSQL advisory locks that mark keys in flight: the two-key form (a space no other lock
# of the service uses), its two 32-bit halves the 64-bit hash of scope and key (seeded with
# KEY_LOCKS). With a 32-bit hash, two batches of 1,000 keys in flight at once shared a lock
# about once in 4,000 transactions, refusing an event as in flight that was not (`make
# bench` met one); with 64 bits, about once in 10^13.
KEY_LOCKS = 0x1DE4
KEY_LOCK_TAKEN = (
    "pg_try_advisory_xact_lock((hashtextextended(:scope || ' ' || {key}, :space) >> 32)::int,"
    " hashtextextended(:scope || ' ' || {key}, :space)::bit(32)::int)"
)
_CLAIM = text(
    f"SELECT k FROM unnest(CAST(:keys AS text[])) AS k WHERE NOT {KEY_LOCK_TAKEN.format(key='k')}"
)


async def claim(session: AsyncSession, scope: str, keys: Sequence[str]) -> set[str]:
    """Mark these keys as in flight until this transaction ends; the ones another
    transaction has in flight right now are returned (their requests answer 409).

    Only PostgreSQL needs it: on SQLite one transaction writes at a time, so a request
    never sees another one's key in flight (within a process, see `KeysInFlight`).
    Two different keys share a lock only if their 64-bit hashes are equal."""
    if not keys or session.get_bind().dialect.name != "postgresql":
        return set()
    parameters = {"keys": list(keys), "space": KEY_LOCKS, "scope": scope}
    return set((await session.scalars(_CLAIM, parameters)).all())


# --- the one path ---------------------------------------------------------------------------


@dataclass
class Group(Generic[T]):
    """A group of requests sorted against the stored answers and the keys in flight: what
    is answered already, and which requests (`todo`, by index, in order) are to apply."""

    requests: Sequence[Keyed | None]
    answers: list[Answer | None]
    first: dict[str, int]  # the index of the request that applies each key
    todo: list[int]
    busy: set[str]
    deferred: set[int] = field(default_factory=set)

    @classmethod
    def sort(cls, requests: Sequence[Keyed | None], stored: dict[str, Stored]) -> Group[T]:
        """A stored key answers its answer again (or `idempotency_key_reused`), a key seen
        earlier in the group answers the first one's answer; the rest are to apply."""
        group: Group[T] = cls(requests, [None] * len(requests), {}, [], set())
        for index, request in enumerate(requests):
            if request is None:
                group.todo.append(index)
                continue
            key = request.key
            if key in stored:
                group.answers[index] = _replayed(stored[key], request.fingerprint)
            elif key in group.first:
                first_print = cast(Keyed, requests[group.first[key]]).fingerprint
                if first_print != request.fingerprint:
                    group.answers[index] = refused(reused(key))
                # else: answered with the first one's answer (`finish`)
            else:
                group.first[key] = index
                group.todo.append(index)
        return group

    def mark_busy(self, busy: set[str]) -> None:
        """Keys another transaction has in flight (`claim`): answered 409, not applied."""
        self.busy = busy
        for key in busy:
            self.answers[self.first[key]] = refused(in_flight(key))
            self.todo.remove(self.first[key])

    def defer(self, indexes: Sequence[int]) -> None:
        """Requests of `todo` left for a later transaction, and with them the requests that
        would answer their answer (the same key, sent again in the group): not applied,
        not answered (None), their keys not stored."""
        keys = {request.key for i in indexes if (request := self.requests[i]) is not None}
        for key in keys:
            del self.first[key]
        self.deferred.update(indexes)
        self.deferred.update(
            i
            for i, request in enumerate(self.requests)
            if request is not None and request.key in keys and self.answers[i] is None
        )
        self.todo = [i for i in self.todo if i not in self.deferred]

    def settle(self, outcomes: Sequence[Outcome[T]], answer: Render[T]) -> None:
        """The outcomes of the `todo` requests, in order."""
        for index, outcome in zip(self.todo, outcomes, strict=True):
            if isinstance(outcome, TokenAdminError):
                self.answers[index] = refused(outcome)
            else:
                self.answers[index] = answer(outcome)

    def finish(
        self, scope: str, now: datetime, ttl: timedelta
    ) -> tuple[list[Answer | None], list[dict[str, Any]]]:
        """Every request's answer (None: deferred), and the records to keep (for
        `remember`)."""
        final: list[Answer | None] = []
        for index, request in enumerate(self.requests):
            if index in self.deferred:
                final.append(None)
                continue
            given = self.answers[index]
            if given is None:
                assert request is not None
                applied = self.answers[self.first[request.key]]
                assert applied is not None
                given = Answer(applied.status_code, applied.body, replayed=True)
            final.append(given)
        rows = [
            remembered(scope, key, cast(Keyed, self.requests[i]).fingerprint, given, now, ttl)
            for key, i in self.first.items()
            if key not in self.busy and (given := final[i]) is not None and kept(given.status_code)
        ]
        return final, rows


async def write_group(
    session: AsyncSession,
    scope: str,
    requests: Sequence[Keyed | None],
    apply: Callable[[list[int]], Awaitable[list[Outcome[T]]]],
    answer: Render[T],
    *,
    now: datetime,
    ttl: timedelta,
    claiming: bool = True,
) -> list[Answer]:
    """Answer a group of requests (`None`: one sent without a key) in this transaction.

    One statement finds the records of all their keys; a stored key answers its answer
    again (or `idempotency_key_reused`), a key seen earlier in the group answers the first
    one's answer, a key in flight elsewhere answers 409. `apply` gets the indices of the
    rest, in order, and gives each a result (answered by `answer`) or a refusal; one
    statement then stores the answers to keep."""
    stored = await find(session, scope, [r.key for r in requests if r is not None])
    group: Group[T] = Group.sort(requests, stored)
    if claiming:
        group.mark_busy(await claim(session, scope, list(group.first)))
    if group.todo:
        group.settle(await apply(group.todo), answer)
    final, rows = group.finish(scope, now, ttl)
    await remember(session, rows)
    answered = [given for given in final if given is not None]
    assert len(answered) == len(final)  # nothing is deferred here
    return answered


def _replayed(record: Stored, print_: str) -> Answer:
    try:
        return replay(record, print_)
    except IdempotencyKeyReused as error:
        return refused(error)


async def write_once(
    db: Database,
    work: Callable[[AsyncSession], Awaitable[T]],
    answer: Render[T],
    *,
    key: Keyed | None,
    scope: str,
    clock: Clock,
    ttl: timedelta,
    in_flight: KeysInFlight | None = None,
) -> Answer:
    """Run one write in one transaction and answer it; with a key, through `write_group`.

    `work` refuses by raising: its transaction rolls back, and a refusal worth keeping is
    stored in a transaction of its own, so the same request is refused the same way again.
    Callable from any interface (API, dashboard, CLI), with or without a request."""
    if key is None:
        return answer(await db.write(work))
    check_key(key.key)
    requests = [key]

    async def attempt(session: AsyncSession, refusal: TokenAdminError | None = None) -> Answer:
        async def apply(_todo: list[int]) -> list[Outcome[T]]:
            return [refusal if refusal is not None else await work(session)]

        answers = await write_group(
            session,
            scope,
            requests,
            apply,
            answer,
            now=clock.now(),
            ttl=ttl,
            claiming=refusal is None,
        )
        return answers[0]

    with in_flight.holding(scope, key.key) if in_flight else nullcontext():
        try:
            return await db.write(attempt)
        except TokenAdminError as error:
            if error.code in NOT_KEPT or not kept(error.status_code):
                raise
            return await db.write(partial(attempt, refusal=error))
