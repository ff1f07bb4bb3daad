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

from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.errors import IdempotencyKeyReused, InvalidRequest
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
    object is not theirs) leaves no trace, so it can't change anything, not even a key."""
    return answer_status not in DENIED


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
