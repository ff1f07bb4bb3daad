from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Header, status
from fastapi.responses import JSONResponse

from tokenadmin.auth.principal import Principal
from tokenadmin.deps import ClockDep, DatabaseDep, PrincipalDep, SettingsDep, answer_response
from tokenadmin.errors import Forbidden, InvalidRequest
from tokenadmin.idempotency.service import check_key
from tokenadmin.schemas import ErrorOut
from tokenadmin.usage import service
from tokenadmin.usage.schemas import (
    BatchOut,
    BatchResult,
    Commit,
    ReservationCreate,
    ReservationOut,
    UsageAccepted,
    UsageBatch,
    UsageFields,
)

router = APIRouter(prefix="/v1", tags=["metering"])
REFUSALS: dict[int | str, dict[str, Any]] = {
    402: {"model": ErrorOut},
    404: {"model": ErrorOut},
    409: {"model": ErrorOut},
}


def _caller(principal: Principal) -> service.Caller:
    if not principal.is_operator and "usage" not in principal.scopes:
        raise Forbidden("Metering needs a key with the 'usage' scope.", details={"scope": "usage"})
    return service.Caller(principal.actor, principal.org_id, principal.idempotency_scope)


async def _one(
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
    principal: Principal,
    operation: service.Operation,
) -> JSONResponse:
    answers = await service.run(
        db,
        clock,
        _caller(principal),
        [operation],
        default_ttl=settings.reservation_ttl_seconds,
        idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
    )
    return answer_response(answers[0])


@router.post("/usage", response_model=UsageAccepted, responses=REFUSALS)
async def record_usage(
    body: UsageFields,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
) -> JSONResponse:
    """Record usage; refused as a whole with insufficient_tokens when it does not fit."""
    if idempotency_key is None:
        raise InvalidRequest(
            "Usage needs an Idempotency-Key header, so a retry is never counted twice.",
            code="idempotency_key_required",
        )
    operation = service.Operation(
        "usage",
        user=body.user,
        kind=body.kind,
        tokens=body.tokens,
        details=body.details(),
        idempotency_key=check_key(idempotency_key),
    )
    return await _one(db, clock, settings, principal, operation)


@router.post("/usage/batch", response_model=BatchOut)
async def record_usage_batch(
    body: UsageBatch,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> BatchOut:
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
    answers = await service.run(
        db,
        clock,
        _caller(principal),
        operations,
        default_ttl=settings.reservation_ttl_seconds,
        idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
    )
    results = []
    for index, answer in enumerate(answers):
        ok = answer.status_code < 400
        results.append(
            BatchResult(
                index=index,
                status=answer.status_code,
                accepted=ok,
                replayed=answer.replayed,
                result=answer.body if ok else None,
                error=None if ok else answer.body.get("error"),
            )
        )
    accepted = sum(1 for r in results if r.accepted)
    return BatchOut(accepted=accepted, refused=len(results) - accepted, results=results)


@router.post(
    "/reservations",
    status_code=status.HTTP_201_CREATED,
    response_model=ReservationOut,
    responses=REFUSALS,
)
async def reserve(
    body: ReservationCreate,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
) -> JSONResponse:
    """Hold tokens for a long or streaming operation until commit, release or expiry."""
    operation = service.Operation(
        "reserve",
        user=body.user,
        kind=body.kind,
        tokens=body.tokens,
        ttl_seconds=body.ttl_seconds,
        details=body.details(),
        idempotency_key=check_key(idempotency_key) if idempotency_key is not None else None,
    )
    return await _one(db, clock, settings, principal, operation)


@router.post(
    "/reservations/{reservation_id}/commit", response_model=ReservationOut, responses=REFUSALS
)
async def commit_reservation(
    reservation_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
    body: Commit | None = None,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
) -> JSONResponse:
    """Commit what was actually used; the rest of the reservation is released."""
    operation = service.Operation(
        "commit",
        reservation_id=reservation_id,
        tokens=body.tokens if body else None,
        idempotency_key=check_key(idempotency_key) if idempotency_key is not None else None,
    )
    return await _one(db, clock, settings, principal, operation)


@router.post(
    "/reservations/{reservation_id}/release", response_model=ReservationOut, responses=REFUSALS
)
async def release_reservation(
    reservation_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    settings: SettingsDep,
    idempotency_key: str | None = Header(default=None, alias="Idempotency-Key"),
) -> JSONResponse:
    """Release a reservation without using it."""
    operation = service.Operation(
        "release",
        reservation_id=reservation_id,
        idempotency_key=check_key(idempotency_key) if idempotency_key is not None else None,
    )
    return await _one(db, clock, settings, principal, operation)
