"""The token request routes: thin callers of token_request.service.

Who may do what: a key acting for the organization's users (scope `admin` or `usage`,
or an operator's) asks and withdraws for a user it names; a member's own key (a caller
with a user) for themself. Readers (`read`, `usage`, `admin`) list and read; only `admin`
approves and denies. Another organization's requests do not exist (404).
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import AUDITED
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import DatabaseDep, Limit, Offset, PrincipalDep, db_of, idempotent_write
from tokenadmin.errors import InvalidRequest, NotFound
from tokenadmin.models import TokenRequest, User
from tokenadmin.organization import service as organization_service
from tokenadmin.token_request import service
from tokenadmin.token_request.schemas import (
    RequestState,
    TokenRequestApprove,
    TokenRequestAsk,
    TokenRequestDeny,
    TokenRequestOut,
    TokenRequestPage,
)
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository
from tokenadmin.user.service import find_by_ref

router = APIRouter(prefix="/v1/token-requests", tags=["token requests"], dependencies=AUDITED)
org_router = APIRouter(
    prefix="/v1/organizations/{org_id}/token-requests",
    tags=["token requests"],
    dependencies=AUDITED,
)
user_router = APIRouter(
    prefix="/v1/users/{user_id}/token-requests", tags=["token requests"], dependencies=AUDITED
)

FOR_USERS = ("admin", "usage")
"""Scopes of keys that act for the organization's users: an admin, the platform's back end."""
READERS = ("read", "usage", "admin")


def _allow_self_or(principal: Principal, user: User, scopes: tuple[str, ...], what: str) -> None:
    if principal.user_id != user.id:
        principal.require_any(user.org_id, scopes, what)


async def _asker(session: AsyncSession, principal: Principal, ref: str | None) -> User:
    """The user a request is for: named by the body, or the caller themself."""
    if ref is None:
        if principal.user_id is None:
            raise InvalidRequest(
                "Name the user who asks: `user`, their id or email.", details={"field": "user"}
            )
        ref = str(principal.user_id)
    user = await find_by_ref(session, principal.org_id, ref)
    _allow_self_or(principal, user, FOR_USERS, "User")
    return user


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TokenRequestOut)
async def ask(body: TokenRequestAsk, request: Request, principal: PrincipalDep) -> JSONResponse:
    """Ask for more tokens of a kind, with a reason; pending until decided."""
    # Checked before idempotent_write, which answers a replay without running the work.
    asker = await db_of(request).read(lambda session: _asker(session, principal, body.user))

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        org = await organization_service.lock_for_change(session, act, asker.org_id)
        user = await user_repository.get(session, asker.id)
        assert user is not None
        return await service.ask(session, act, org, user, body.kind, body.amount, body.reason)

    return await idempotent_write(request, principal, work, status_code=201)


@org_router.get("", response_model=TokenRequestPage)
async def list_organization_requests(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    state: Annotated[
        RequestState | Literal["any"], Query(description="`any` lists every state.")
    ] = "pending",
    user_id: uuid.UUID | None = None,
    kind: Kind | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> TokenRequestPage:
    """An organization's requests, newest first: pending ones unless `state` says otherwise."""
    principal.require_any(org_id, READERS, "Organization")
    query = service.RequestQuery(
        org_id=org_id,
        user_id=user_id,
        state=None if state == "any" else state,
        kind=kind,
        limit=limit,
        offset=offset,
    )
    return await db.read(lambda session: service.search(session, query))


@user_router.get("", response_model=TokenRequestPage)
async def list_user_requests(
    user_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    state: RequestState | None = None,
    kind: Kind | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> TokenRequestPage:
    """A user's requests in every state, newest first (a member's own: theirs)."""

    async def work(session: AsyncSession) -> TokenRequestPage:
        user = await user_repository.get(session, user_id)
        if user is None:
            raise NotFound("User not found.")
        _allow_self_or(principal, user, READERS, "User")
        query = service.RequestQuery(
            org_id=user.org_id, user_id=user.id, state=state, kind=kind, limit=limit, offset=offset
        )
        return await service.search(session, query)

    return await db.read(work)


async def _visible(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID, scopes: tuple[str, ...]
) -> tuple[TokenRequest, User]:
    found, user = await service.get(session, request_id)
    _allow_self_or(principal, user, scopes, "Token request")
    return found, user


@router.get("/{request_id}", response_model=TokenRequestOut)
async def get_request(
    request_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> TokenRequestOut:
    """One request, with its decision once there is one."""

    async def work(session: AsyncSession) -> TokenRequestOut:
        return TokenRequestOut.of(*await _visible(session, principal, request_id, READERS))

    return await db.read(work)


async def _decider(request_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep) -> Principal:
    """The caller, once allowed to decide this request (before `idempotent_write`)."""
    found, _ = await db.read(lambda session: service.get(session, request_id))
    principal.require_any(found.org_id, ("admin",), "Token request")
    return principal


async def _withdrawer(request_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep) -> Principal:
    await db.read(lambda session: _visible(session, principal, request_id, FOR_USERS))
    return principal


DeciderDep = Annotated[Principal, Depends(_decider)]
WithdrawerDep = Annotated[Principal, Depends(_withdrawer)]


async def _decide(
    request: Request, principal: Principal, request_id: uuid.UUID, decision: service.Decision
) -> JSONResponse:
    """A decision on the request, with its organization locked, in one idempotent write."""

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        org = await service.lock_org_of(session, act, request_id)
        return await decision(session, act, org)

    return await idempotent_write(request, principal, work)


@router.post("/{request_id}/approve", response_model=TokenRequestOut)
async def approve(
    request_id: uuid.UUID, body: TokenRequestApprove, request: Request, principal: DeciderDep
) -> JSONResponse:
    """Grant a pending request: the allowance rises by `amount` (default: the amount asked)."""
    decision = partial(service.approve, request_id=request_id, amount=body.amount, note=body.note)
    return await _decide(request, principal, request_id, decision)


@router.post("/{request_id}/deny", response_model=TokenRequestOut)
async def deny(
    request_id: uuid.UUID, body: TokenRequestDeny, request: Request, principal: DeciderDep
) -> JSONResponse:
    """Refuse a pending request with a note the member reads."""
    decision = partial(service.deny, request_id=request_id, note=body.note)
    return await _decide(request, principal, request_id, decision)


@router.post("/{request_id}/withdraw", response_model=TokenRequestOut)
async def withdraw(
    request_id: uuid.UUID, request: Request, principal: WithdrawerDep
) -> JSONResponse:
    """Take back a pending request (the member, or a key acting for them)."""
    decision = partial(service.withdraw, request_id=request_id, user_id=principal.user_id)
    return await _decide(request, principal, request_id, decision)
