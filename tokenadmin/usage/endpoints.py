"""The metering routes: each turns its request into operations, and the metering results
into answers (`answer_of`: the status code and body, kept for replays)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import JSONResponse

from tokenadmin.auth.audit import log_denied
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.deps import answer_response, remembered_principal
from tokenadmin.errors import Forbidden, TokenAdminError
from tokenadmin.idempotency.service import Answer, KeysInFlight, check_key
from tokenadmin.schemas import error_answers
from tokenadmin.usage import service
from tokenadmin.usage.coalescer import Coalescer
from tokenadmin.usage.schemas import (
    BatchOut,
    Commit,
    ReservationCreate,
    ReservationOut,
    UsageAccepted,
    UsageBatch,
    UsageFields,
)

router = APIRouter(prefix="/v1", tags=["metering"])
_encode = msgspec.json.Encoder().encode
REFUSALS = error_answers(402)
"""What metering may answer besides the errors of every operation (app.API_ERRORS)."""


def answer_of(result: service.Metered) -> Answer:
    """How metering answers a result: usage 200, a new reservation 201, a reservation
    committed, released or expired 200. Encoded once (msgspec writes these bodies of text,
    integers, booleans and null as json.dumps reads them back): the same bytes are the
    fast path's answer and the kept record."""
    if isinstance(result, service.Used):
        body = {"accepted": True, **_whose(result), "journal_entry_id": result.entry.id}
        return Answer(200, body, encoded=_encode(body))
    assert isinstance(result, service.Held)
    entry = result.entry
    body = {
        "id": str(result.id),
        "status": result.status,
        **_whose(result),
        "journal_entry_id": None if entry is None else entry.id,
    }
    return Answer(201 if result.status == "open" else 200, body, encoded=_encode(body))


def _whose(result: service.Metered) -> dict[str, Any]:
    """The user, kind and tokens of a result, and the user's balance after it."""
    balance = result.balance
    fields: dict[str, Any] = {
        "user_id": str(result.user_id),
        "email": result.email,
        "kind": result.kind.value,
        "tokens": result.tokens,
    }
    if isinstance(result, service.Held):
        fields["committed"] = result.committed
        fields["expires_at"] = result.expires_at.isoformat()
    fields.update(
        allowance=balance.allowance,
        used=balance.used,
        reserved=balance.reserved,
        remaining=balance.remaining,
    )
    return fields


def metering(db: Database, clock: Clock, settings: Settings, in_flight: KeysInFlight) -> Coalescer:
    """The metering engine of the routes (`app.state.coalescer`)."""
    run = partial(
        service.run,
        db,
        clock,
        answer=answer_of,
        default_ttl=settings.reservation_ttl_seconds,
        idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
    )
    return Coalescer(run, in_flight=in_flight)


@dataclass(frozen=True)
class Meter:
    """A caller allowed to meter, with the metering engine."""

    caller: service.Caller
    coalescer: Coalescer
    request: Request

    async def run(self, operations: list[service.Operation]) -> list[Answer]:
        """Operations in one transaction of their own."""
        return await self.coalescer.run(self.caller, operations)

    async def one(self, operation: service.Operation) -> JSONResponse:
        """One operation, in a transaction shared with the caller's concurrent ones."""
        if operation.idempotency_key is not None:
            check_key(operation.idempotency_key)
        answer = await self.coalescer.submit(self.caller, operation)
        if answer.status_code == 401:  # a key revoked since it was remembered
            log_denied(self.request, answer.status_code, answer.body["error"]["code"])
        return answer_response(answer)


async def get_meter(request: Request) -> Meter:
    # One dependency, not one per part: the metering routes are the hot path. Refusals are
    # logged here rather than by `auth.audit.log_denials`, which would cost every request.
    try:
        principal = await remembered_principal(request)
        if not principal.is_operator and "usage" not in principal.scopes:
            raise Forbidden(
                "Metering needs a key with the 'usage' scope.", details={"scope": "usage"}
            )
    except TokenAdminError as error:
        log_denied(request, error.status_code, error.code)
        raise
    caller = service.Caller(
        principal.actor, principal.org_id, principal.idempotency_scope, principal.key_id
    )
    return Meter(caller, request.app.state.coalescer, request)


MeterDep = Annotated[Meter, Depends(get_meter)]
KEY = Header(
    alias="Idempotency-Key",
    description="1 to 255 printable characters of your choosing: the same key with the same"
    " request answers the first answer again and changes nothing.",
    json_schema_extra={"minLength": 1, "maxLength": 255},
)
KeyDep = Annotated[str | None, KEY]
RequiredKeyDep = Annotated[str, KEY]
"""Missing, it is refused with idempotency_key_required (app.py)."""


@router.post("/usage", response_model=UsageAccepted, responses=REFUSALS)
async def record_usage(body: UsageFields, meter: MeterDep, key: RequiredKeyDep) -> JSONResponse:
    """Record usage; refused as a whole with insufficient_tokens when it does not fit."""
    return await meter.one(_debit("usage", body, key))


def _debit(
    action: service.Action, body: UsageFields, key: str | None, ttl_seconds: int | None = None
) -> service.Operation:
    return service.Operation(
        action,
        user=body.user,
        kind=body.kind,
        tokens=body.tokens,
        ttl_seconds=ttl_seconds,
        details=body.details(),
        idempotency_key=key,
    )


@router.post("/usage/batch", response_model=BatchOut)
async def record_usage_batch(body: UsageBatch, meter: MeterDep) -> JSONResponse:
    """Record up to 1,000 usage events; each is accepted or refused on its own."""
    operations = [_debit("usage", e, check_key(e.idempotency_key)) for e in body.events]
    # Built as plain data, not as BatchResult models: a thousand models to validate and
    # serialize would cost more than metering the events.
    results = [
        _batch_result(index, answer) for index, answer in enumerate(await meter.run(operations))
    ]
    accepted = sum(1 for r in results if r["accepted"])
    return JSONResponse(
        {"accepted": accepted, "refused": len(results) - accepted, "results": results}
    )


def _batch_result(index: int, answer: Answer) -> dict[str, Any]:
    ok = answer.status_code < 400
    return {
        "index": index,
        "status": answer.status_code,
        "accepted": ok,
        "replayed": answer.replayed,
        "result": answer.body if ok else None,
        "error": None if ok else answer.body.get("error"),
    }


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    responses=REFUSALS,
)
async def reserve(body: ReservationCreate, meter: MeterDep, key: KeyDep = None) -> JSONResponse:
    """Hold tokens for a long or streaming operation until commit, release or expiry."""
    return await meter.one(_debit("reserve", body, key, body.ttl_seconds))


@router.post(
    "/reservations/{reservation_id}/commit", response_model=ReservationOut, responses=REFUSALS
)
async def commit_reservation(
    reservation_id: uuid.UUID, meter: MeterDep, key: KeyDep = None, body: Commit | None = None
) -> JSONResponse:
    """Commit what was actually used; the rest of the reservation is released."""
    tokens = body.tokens if body else None
    operation = service.Operation(
        "commit", reservation_id=reservation_id, tokens=tokens, idempotency_key=key
    )
    return await meter.one(operation)


@router.post(
    "/reservations/{reservation_id}/release", response_model=ReservationOut, responses=REFUSALS
)
async def release_reservation(
    reservation_id: uuid.UUID, meter: MeterDep, key: KeyDep = None
) -> JSONResponse:
    """Release a reservation without using it."""
    operation = service.Operation("release", reservation_id=reservation_id, idempotency_key=key)
    return await meter.one(operation)
