"""Who calls the Ask Sage API, and what they send.

The caller's token is in `x-access-tokens`: an access token from
`/user/get-token-with-api-key`, or an API key itself. Bodies are JSON objects, form
fields or multipart forms (the client sends `/server/query` as form fields), read into one
model per endpoint; a body that is none of these, or a field that does not fit its model,
is refused with the field named.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.asksage import access_token
from tokenadmin.asksage.envelope import body, of_answer
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.errors import Forbidden, InvalidRequest, MalformedRequest, Unauthenticated
from tokenadmin.idempotency import service as idempotency
from tokenadmin.logs import note_actor
from tokenadmin.organization import service as organization_service
from tokenadmin.usage.service import Caller

HEADER = "x-access-tokens"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


async def get_principal(request: Request) -> Principal:
    secret = request.headers.get(HEADER, "").strip()
    if not secret:
        raise Unauthenticated(
            f"Send an access token or your API key in the '{HEADER}' header"
            " (get a token from /user/get-token-with-api-key)."
        )
    now = clock_of(request).now()

    async def work(session: AsyncSession) -> Principal:
        if access_token.is_access_token(secret):
            return await access_token.authenticate(session, secret, now)
        return await api_key_service.authenticate(session, secret)

    principal = await db_of(request).read(work)
    note_actor(request.scope, principal.actor)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def member(principal: Principal) -> uuid.UUID:
    """The caller's own user: these calls are a person's, made with their personal key."""
    if principal.user_id is None:
        raise Forbidden(
            "This call is a user's own: send an access token of a personal API key (or the"
            " key itself); operator and organization keys have no user of their own.",
            code="personal_key_required",
        )
    return principal.user_id


def admin_org(principal: Principal, org_id: uuid.UUID | None) -> uuid.UUID:
    """The organization an admin-* call acts in: the caller's own (an administrator's
    key), or the one an operator names with `org_id`."""
    if principal.is_operator:
        if org_id is None:
            raise InvalidRequest(
                "An operator acts in an organization it names: send `org_id`.",
                details={"field": "org_id"},
            )
        principal.require(org_id, "admin")
        return org_id
    own = principal.org_id
    assert own is not None
    if org_id is not None:
        principal.require(org_id, "admin")  # another organization's: 404
    if "admin" not in principal.scopes:
        raise Forbidden(
            "admin-* calls need an administrator of the organization; this key is a"
            " member's (or lacks the 'admin' scope).",
            details={"scope": "admin"},
        )
    return own


def caller_of(principal: Principal) -> Caller:
    return Caller(principal.actor, principal.org_id, principal.idempotency_scope, principal.key_id)


async def read_fields(request: Request) -> dict[str, Any]:
    """The body as a mapping of fields: a JSON object, form fields or a multipart form
    (files as UploadFile); no body at all is no field."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        fields: dict[str, Any] = {}
        async with request.form() as form:  # closed here: its files are read now
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    fields[name] = Upload(value.filename, await value.read())
                else:
                    fields[name] = value
        return fields
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise MalformedRequest(
            f"The body is not valid JSON ({error}); send a JSON object or form fields."
        ) from error
    if not isinstance(parsed, dict):
        raise MalformedRequest("The body must be a JSON object (or form fields).")
    return parsed


def _message(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first.get("loc", ()))
    message = first.get("msg", "invalid")
    return f"{field}: {message}" if field else message


def fields(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency reading the body into `model`; refused (422) naming the field."""

    async def read(request: Request) -> M:
        try:
            return model.model_validate(await read_fields(request))
        except ValidationError as error:
            problems = [
                {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")}
                for e in error.errors()
            ]
            raise InvalidRequest(_message(error), details={"errors": problems}) from error

    return read


@dataclass(frozen=True)
class Upload:
    """A file of a multipart body, read whole (bodies are bounded by TOKENADMIN_MAX_BODY_BYTES)."""

    filename: str | None
    content: bytes


def upload(value: Any, field: str) -> Upload:
    if not isinstance(value, Upload):
        raise InvalidRequest(f"{field}: send a file, as multipart/form-data.")
    return value


async def write(
    request: Request,
    principal: Principal,
    work: Callable[[AsyncSession, Act], Awaitable[Any]],
) -> Any:
    """A write in one transaction through the one idempotent-write path (an
    `Idempotency-Key` header, when sent, applies it once), answered as `{"response": ...}`."""
    clock = clock_of(request)
    key = request.headers.get("idempotency-key")
    keyed = None
    if key is not None:
        raw = await request.body()
        print_ = idempotency.fingerprint(request.method, request.url.path, raw.decode("latin-1"))
        keyed = idempotency.Keyed(key, print_)
    kept = await idempotency.write_once(
        db_of(request),
        lambda session: work(session, Act(principal.actor, clock.now())),
        lambda result: idempotency.Answer(200, body(result)),
        key=keyed,
        scope=principal.idempotency_scope,
        clock=clock,
        ttl=timedelta(hours=settings_of(request).idempotency_ttl_hours),
        in_flight=request.app.state.keys_in_flight,
    )
    return of_answer(kept)


async def read(
    request: Request, org_id: uuid.UUID, work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """A read of an organization's state, brought up to date first (a new period, an
    expired purchase)."""
    db = db_of(request)
    await organization_service.up_to_date(db, org_id, clock_of(request).now())
    return await db.read(work)
