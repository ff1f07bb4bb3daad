"""FastAPI dependencies and answers every interface shares: the database, the clock, the
caller, the idempotent write, and CSV downloads from one snapshot."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Annotated, Any

import msgspec
from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.background import BackgroundTask
from starlette.datastructures import State
from starlette.types import Scope

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.api_key.cache import KeyCache
from tokenadmin.auth.principal import Principal
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import Unauthenticated
from tokenadmin.idempotency import service as idempotency
from tokenadmin.logs import note_actor
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service

# The dependencies are coroutines although they do not wait: FastAPI runs a plain
# function in a worker thread, a round trip that costs more than the work.


async def get_db(request: Request) -> Database:
    return db_of(request)


async def get_clock(request: Request) -> Clock:
    return clock_of(request)


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


def db_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def clock_of(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(get_db)]
ClockDep = Annotated[Clock, Depends(get_clock)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def bearer_of(header: str) -> str | None:
    """The key of an Authorization header's value, if it is a bearer token."""
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return None
    return secret.strip()


def _bearer(request: Request) -> str:
    secret = bearer_of(request.headers.get("authorization", ""))
    if secret is None:
        raise Unauthenticated(
            "Send an API key as 'Authorization: Bearer <key>'.",
            details={"hint": "Operators create keys with `tokenadmin operator-key --name NAME`."},
        )
    return secret


async def get_principal(request: Request, db: DatabaseDep) -> Principal:
    secret = _bearer(request)
    principal = await db.read(lambda session: api_key_service.authenticate(session, secret))
    note_actor(request.scope, principal.actor)
    return principal


async def remembered_principal(request: Request) -> Principal:
    """The caller, from the key cache when it can: only for routes that confirm the key
    in their own transaction (`api_key.service.is_live`), as metering does."""
    return await remembered_key(request.app.state, request.scope, _bearer(request))


async def remembered_key(state: State, scope: Scope, secret: str) -> Principal:
    """`remembered_principal` of a key already read from its request (the metering routes'
    lean path, tokenadmin.usage.fast, reads it from the ASGI scope)."""
    key_hash = api_key_service.hash_key(secret)
    cache: KeyCache = state.key_cache
    principal = cache.get(key_hash)
    if principal is None:
        db: Database = state.db
        principal = await db.read(
            lambda session: api_key_service.authenticate_hash(session, key_hash)
        )
        cache.put(key_hash, principal)
    note_actor(scope, principal.actor)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]

Limit = Annotated[int, Query(ge=1, le=500)]
"""How many items a list answers at most, in one page."""
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
"""How many items of a list to pass over before the page."""


def act_of(principal: Principal, clock: Clock) -> Act:
    return Act(principal.actor, clock.now())


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return result


async def _body_print(request: Request) -> str:
    raw = await request.body()
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return idempotency.fingerprint(
        request.method, request.url.path, str(request.query_params), body
    )


async def idempotent_write(
    request: Request,
    principal: Principal,
    work: Callable[[AsyncSession, Act], Awaitable[Any]],
    *,
    status_code: int = 200,
) -> JSONResponse:
    """Run a write in one transaction; with an Idempotency-Key, answer replays the same
    (`idempotency.write_once`, the one path of every write)."""
    clock = clock_of(request)
    key = request.headers.get("idempotency-key")
    answer = await idempotency.write_once(
        db_of(request),
        lambda session: work(session, act_of(principal, clock)),
        lambda result: idempotency.Answer(status_code, _jsonable(result)),
        key=None if key is None else idempotency.Keyed(key, await _body_print(request)),
        scope=principal.idempotency_scope,
        clock=clock,
        ttl=timedelta(hours=settings_of(request).idempotency_ttl_hours),
        in_flight=request.app.state.keys_in_flight,
    )
    return answer_response(answer)


async def locked_write(
    request: Request,
    principal: Principal,
    org_id: uuid.UUID,
    work: Callable[[AsyncSession, Act, Organization], Awaitable[Any]],
    *,
    status_code: int = 200,
) -> JSONResponse:
    """An idempotent write (`idempotent_write`) of a change to one organization, which it
    locks and brings up to date first (`organization.service.lock_for_change`)."""

    async def locked(session: AsyncSession, act: Act) -> Any:
        org = await organization_service.lock_for_change(session, act, org_id)
        return await work(session, act, org)

    return await idempotent_write(request, principal, locked, status_code=status_code)


class WriteAnswer(JSONResponse):
    """A write's answer, written by msgspec: the bytes Starlette's JSONResponse writes
    (compact, text as is) for the strings, integers, booleans and nulls answers are made
    of, several times sooner. A 10,000-user allowance change answers 1.6 MB: 18 to 45 ms
    by `json.dumps`, 2 to 6 by msgspec. (A float's exponent would lose its plus sign:
    1e16, not 1e+16; the same number to any JSON reader.)"""

    def render(self, content: Any) -> bytes:
        return _encode(content)


_encode = msgspec.json.Encoder().encode


def answer_response(answer: idempotency.Answer) -> JSONResponse:
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
    return WriteAnswer(answer.body, status_code=answer.status_code, headers=headers)


STALLED = "60s"
"""How long a CSV download may wait for its client between two reads of the database."""


async def csv_download(
    db: Database,
    produce: Callable[[AsyncSession], AsyncIterator[str]],
    filename: str,
) -> StreamingResponse:
    """A CSV file streamed from one snapshot of the database (its rows all of one moment).
    The snapshot opens before the answer starts, so a database out of reach answers 503
    rather than a 200 cut short. On PostgreSQL a client that stalls for longer than
    STALLED loses its download, and the pool gets its connection back."""
    stack = AsyncExitStack()
    session = await stack.enter_async_context(db.reading(snapshot=True))
    if not db.is_sqlite:
        # A client that stops reading must not keep a connection of the pool for ever.
        await session.execute(text(f"SET LOCAL idle_in_transaction_session_timeout = '{STALLED}'"))

    async def chunks() -> AsyncIterator[str]:
        try:
            async for chunk in produce(session):
                yield chunk
        except BaseException as error:  # the transaction ends as a failed one: rolled back
            if not await stack.__aexit__(type(error), error, error.__traceback__):
                raise
        else:
            await stack.aclose()

    return StreamingResponse(
        chunks(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
        background=BackgroundTask(stack.aclose),  # also when the file was never sent
    )
