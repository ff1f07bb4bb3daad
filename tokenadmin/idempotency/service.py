"""Idempotency keys: the same key and body answer the first answer again and change nothing.

A record holds the first answer (success or refusal) and is written in the same transaction
as the change it describes, so a change and its record commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.errors import IdempotencyKeyInFlight, IdempotencyKeyReused, InvalidRequest
from tokenadmin.models import IdempotencyRecord
from tokenadmin.rows import insert_many

RECORDS = cast(Table, IdempotencyRecord.__table__)

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


DENIED = frozenset({401, 403, 404})


def kept(answer_status: int) -> bool:
    """Whether an answer is remembered: a denied request (the caller may not act, or the
    object is not theirs) leaves no trace, so it can't change anything, not even a key;
    nor does a server-side failure (503: the database out of reach), which the client
    sends again with the same key to have the request applied then."""
    return answer_status not in DENIED and answer_status < 500


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency keys are 1 to {MAX_KEY_LENGTH} printable characters.",
            code="invalid_idempotency_key",
        )
    return key


def fingerprint(*parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def reused(key: str) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"The idempotency key '{key}' was already used for a different request;"
        " use a new key for a new request.",
        details={"idempotency_key": key},
    )


async def find(
    session: AsyncSession, scope: str, keys: Sequence[str]
) -> dict[str, IdempotencyRecord]:
    if not keys:
        return {}
    found: dict[str, IdempotencyRecord] = {}
    for start in range(0, len(keys), 1000):
        statement = select(IdempotencyRecord).where(
            IdempotencyRecord.scope == scope, IdempotencyRecord.key.in_(keys[start : start + 1000])
        )
        found.update({r.key: r for r in (await session.scalars(statement)).all()})
    return found


def replay(record: IdempotencyRecord, print_: str) -> Answer:
    if record.fingerprint != print_:
        raise reused(record.key)
    return Answer(record.status_code, json.loads(record.response), replayed=True)


def remembered(
    scope: str, key: str, print_: str, answer: Answer, now: datetime, ttl: timedelta
) -> dict[str, Any]:
    """The record that keeps `answer` for replays of `key`, as a row for `remember`."""
    return {
        "scope": scope,
        "key": key,
        "fingerprint": print_,
        "status_code": answer.status_code,
        "response": json.dumps(answer.body, separators=(",", ":")),
        "created_at": now,
        "expires_at": now + ttl,
    }


# PostgreSQL advisory locks (two-key form, their own space) that mark keys in flight.
_KEY_LOCKS = 0x1DE4
_CLAIM = text(
    "SELECT k FROM unnest(CAST(:keys AS text[])) AS k"
    " WHERE NOT pg_try_advisory_xact_lock(:space, hashtext(:scope || ' ' || k))"
)


async def claim(session: AsyncSession, scope: str, keys: Sequence[str]) -> set[str]:
    """Mark these keys as in flight until this transaction ends; the ones another
    transaction has in flight right now are returned (their requests answer 409).

    Only PostgreSQL needs it: on SQLite one transaction writes at a time, so a request
    never sees another one's key in flight (within a process, see `usage.coalescer`).
    Two different keys may share a lock (a 32-bit hash): that only answers a rare,
    harmless 409 that the client retries."""
    if not keys or session.get_bind().dialect.name != "postgresql":
        return set()
    parameters = {"keys": list(keys), "space": _KEY_LOCKS, "scope": scope}
    return set((await session.scalars(_CLAIM, parameters)).all())


def in_flight(key: str) -> IdempotencyKeyInFlight:
    return IdempotencyKeyInFlight(
        f"A request with the idempotency key '{key}' is being applied right now;"
        " send it again in a moment to get its answer.",
        details={"idempotency_key": key},
    )


async def remember(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Store records (from `remembered`) in this transaction, in one statement.

    A key another transaction stored first raises IntegrityError: the caller retries and
    replays that transaction's answer."""
    if rows:
        await session.run_sync(insert_many, RECORDS, rows)


async def purge(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < now)
    )
    return int(getattr(result, "rowcount", 0) or 0)
