from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, status
from fastapi.responses import JSONResponse

from tokenadmin.auth.audit import log_denied
from tokenadmin.clock import Clock
from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.deps import answer_response, remembered_principal
from tokenadmin.errors import Forbidden, TokenAdminError
from tokenadmin.idempotency.service import Answer, check_key
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
REFUSALS = error_answers(402)
"""What metering may answer besides the errors of every operation (app.API_ERRORS)."""


@dataclass(frozen=True)
class Meter:
    """A caller allowed to meter, with what running the metering engine needs."""

    caller: service.Caller
    db: Database
    clock: Clock
    settings: Settings
    coalescer: Coalescer
    request: Request

    async def run(self, operations: list[service.Operation]) -> list[Answer]:
        return await service.run(
            self.db,
            self.clock,
            self.caller,
            operations,
            default_ttl=self.settings.reservation_ttl_seconds,
            idempotency_ttl=timedelta(hours=self.settings.idempotency_ttl_hours),
        )

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
    state = request.app.state
    return Meter(caller, state.db, state.clock, state.settings, state.coalescer, request)


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
    operation = service.Operation(
        "usage",
        user=body.user,
        kind=body.kind,
        tokens=body.tokens,
        details=body.details(),
        idempotency_key=key,
    )
    return await meter.one(operation)


@router.post("/usage/batch", response_model=BatchOut)
async def record_usage_batch(body: UsageBatch, meter: MeterDep) -> JSONResponse:
    """Record up to 1,000 usage events; each is accepted or refused on its own."""
    operations = [
        service.Operation(
            "usage",
            user=e.user,
            kind=e.kind,
            tokens=e.tokens,
            details=e.details(),
            idempotency_key=check_key(e.idempotency_key),
        )
        for e in body.events
    ]
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
    operation = service.Operation(
        "reserve",
        user=body.user,
        kind=body.kind,
        tokens=body.tokens,
        ttl_seconds=body.ttl_seconds,
        details=body.details(),
        idempotency_key=key,
    )
    return await meter.one(operation)


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
