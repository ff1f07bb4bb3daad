"""The `/user` base of the Ask Sage API: access tokens, and the administration of an
organization's users (admin-*), over the user, allowance and organization services."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.asksage import access_token
from tokenadmin.asksage.deps import PrincipalDep, admin_org, fields, read, write
from tokenadmin.asksage.envelope import answer
from tokenadmin.asksage.schemas import InOrg, SetBanned, SetTokens, TokenFor, UsersWithTokens
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.errors import Forbidden, Unauthenticated
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.schemas import BalanceOut
from tokenadmin.organization.service import current_period
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service
from tokenadmin.user.endpoints import users_csv
from tokenadmin.user.schemas import UserListQuery, UserOut

router = APIRouter()


@router.post("/get-token-with-api-key")
async def get_token_with_api_key(
    request: Request, body: Annotated[TokenFor, Depends(fields(TokenFor))]
) -> JSONResponse:
    """A short-lived access token for a personal API key and its owner's email
    (TOKENADMIN_ACCESS_TOKEN_MINUTES)."""
    now = clock_of(request).now()
    lifetime = timedelta(minutes=settings_of(request).access_token_minutes)

    async def work(session: AsyncSession) -> access_token.Issued:
        principal = await api_key_service.authenticate(session, body.api_key)
        if principal.user_id is None or principal.key_id is None:
            raise Forbidden(
                "Access tokens are for personal API keys. Send an operator's or an"
                " organization's key itself in 'x-access-tokens' (asksageclient: an empty"
                " email).",
                code="personal_key_required",
            )
        user = await user_repository.get(session, principal.user_id)
        if user is None or user.email != body.email.strip().lower():
            raise Unauthenticated(
                "This API key is not the key of that email: send the email of the key's owner.",
                code="invalid_credentials",
            )
        return access_token.issue(session, principal.key_id, now, lifetime)

    issued = await db_of(request).write(work)
    return answer({"access_token": issued.token, "expires_at": issued.expires_at})


# --- admin-*: an organization's users ------------------------------------------------------


def _names(name: str) -> tuple[str, str]:
    first, _, last = name.strip().partition(" ")
    return first, last.strip()


def user_row(user: UserOut) -> dict[str, Any]:
    """A user as admin-get-all-users-with-tokens lists them (and the admin-update-* calls
    answer them)."""
    first, last = _names(user.name)
    return {
        "id": str(user.id),
        "email": user.email,
        "first_name": first,
        "last_name": last,
        "name": user.name,
        "role": user.role,
        "status": user.status,
        "banned": user.status != "active",
        "max_tokens": user.max_tokens,
        "max_train_tokens": user.max_train_tokens,
        "tokens_used": user.inference.used,
        "train_tokens_used": user.training.used,
        "tokens_reserved": user.inference.reserved,
        "train_tokens_reserved": user.training.reserved,
        "last_activity_at": user.last_activity_at,
        "version": user.version,
    }


@router.post("/admin-get-all-users-with-tokens")
async def admin_get_all_users_with_tokens(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[UsersWithTokens, Depends(fields(UsersWithTokens))],
) -> JSONResponse:
    """The organization's users with their allowances and this period's usage, by email."""
    org_id = admin_org(principal, body.org_id)
    now = clock_of(request).now()

    async def work(session: AsyncSession) -> tuple[list[dict[str, Any]], int]:
        org = await organization_service.get(session, org_id)
        if body.email is not None:  # that user alone, if the organization has them
            start = current_period(org, now)
            found = await user_repository.find_by_refs(session, org_id, [body.email])
            users = [UserOut.of(u, start) for u in found.values()]
            return [user_row(u) for u in users[body.start : body.start + body.limit]], len(users)
        query = UserListQuery(sort="email", limit=body.limit, offset=body.start)
        page = await user_service.search(session, org, now, query)
        return [user_row(u) for u in page.users], page.total

    users, total = await read(request, org_id, work)
    return answer(users, total=total, start=body.start, limit=body.limit)


async def _change_user(
    request: Request,
    principal: Principal,
    org_id: uuid.UUID,
    ref: str | int,
    change: Any,
) -> JSONResponse:
    """A change of one user of the organization, with the organization locked for it."""

    async def work(session: AsyncSession, act: Act) -> dict[str, Any]:
        org = await organization_service.lock_for_change(session, act, org_id)
        user = await user_service.find_by_ref(session, org_id, str(ref))
        await change(session, act, org, user)
        return user_row(UserOut.of(user, current_period(org, act.now)))

    result: JSONResponse = await write(request, principal, work)
    return result


def _set_allowance(kind: Kind, tokens: int) -> Any:
    async def change(session: AsyncSession, act: Act, org: Organization, user: User) -> None:
        await user_service.update(session, act, org, user, allowances={kind: tokens})

    return change


@router.post("/admin-update-user-tokens")
async def admin_update_user_tokens(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[SetTokens, Depends(fields(SetTokens))],
) -> JSONResponse:
    """Set a user's Max Tokens (inference allowance), under the allowance rules."""
    org_id = admin_org(principal, body.org_id)
    change = _set_allowance(Kind.inference, body.tokens)
    return await _change_user(request, principal, org_id, body.id, change)


@router.post("/admin-update-user-train-tokens")
async def admin_update_user_train_tokens(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[SetTokens, Depends(fields(SetTokens))],
) -> JSONResponse:
    """Set a user's Max Train Tokens (training allowance), under the allowance rules."""
    org_id = admin_org(principal, body.org_id)
    change = _set_allowance(Kind.training, body.tokens)
    return await _change_user(request, principal, org_id, body.id, change)


@router.post("/admin-update-user-banned")
async def admin_update_user_banned(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[SetBanned, Depends(fields(SetBanned))],
) -> JSONResponse:
    """Ban (deactivate) or unban (reactivate, with at least the minimums) a user."""
    org_id = admin_org(principal, body.org_id)

    async def change(session: AsyncSession, act: Act, org: Organization, user: User) -> None:
        if body.banned:
            await user_service.deactivate(session, act, org, user)
        else:
            await user_service.reactivate(session, act, org, user)

    return await _change_user(request, principal, org_id, body.id, change)


async def _balance(request: Request, org_id: uuid.UUID) -> organization_service.Balance:
    now = clock_of(request).now()

    async def work(session: AsyncSession) -> organization_service.Balance:
        org = await organization_service.get(session, org_id)
        return await organization_service.balance(session, org, now)

    return await read(request, org_id, work)


@router.post("/admin-total-purchased-tokens-organization")
async def admin_total_purchased_tokens_organization(
    request: Request, principal: PrincipalDep, body: Annotated[InOrg, Depends(fields(InOrg))]
) -> JSONResponse:
    """The organization's capacity of each kind: its purchases that have not expired."""
    balance = await _balance(request, admin_org(principal, body.org_id))
    return answer({kind.value: b.capacity for kind, b in balance.kinds.items()})


@router.post("/admin-used-tokens-for-organization")
async def admin_used_tokens_for_organization(
    request: Request, principal: PrincipalDep, body: Annotated[InOrg, Depends(fields(InOrg))]
) -> JSONResponse:
    """The tokens the organization's users used this period, of each kind."""
    balance = await _balance(request, admin_org(principal, body.org_id))
    return answer({kind.value: b.used for kind, b in balance.kinds.items()})


@router.post("/admin-get-token-stats")
async def admin_get_token_stats(
    request: Request, principal: PrincipalDep, body: Annotated[InOrg, Depends(fields(InOrg))]
) -> JSONResponse:
    """The token balance of both kinds: capacity, allocated, balance, used and reserved."""
    balance = await _balance(request, admin_org(principal, body.org_id))
    return answer(BalanceOut.of(balance))


@router.post("/admin-get-user-count")
async def admin_get_user_count(
    request: Request, principal: PrincipalDep, body: Annotated[InOrg, Depends(fields(InOrg))]
) -> JSONResponse:
    """How many users the organization has (active and deactivated)."""
    org_id = admin_org(principal, body.org_id)
    count = await db_of(request).read(lambda s: user_repository.count_in_org(s, org_id))
    return answer(count)


@router.post(
    "/admin-export-users-csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The user table as CSV."}},
)
async def admin_export_users_csv(
    request: Request, principal: PrincipalDep, body: Annotated[InOrg, Depends(fields(InOrg))]
) -> StreamingResponse:
    """The user table as CSV, the columns of the API's export (text/csv, not JSON)."""
    org_id = admin_org(principal, body.org_id)
    return await users_csv(db_of(request), org_id, clock_of(request).now())
