"""The `/server` base of the Ask Sage API: the caller's usage, metering (query, train),
models and tokenizer, token requests, distribution, and the operators' superadmin-*
calls, over the usage, gateway, catalog, token request, distribution and organization
services."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.asksage.deps import PrincipalDep, admin_org, fields, member, read, write
from tokenadmin.asksage.envelope import answer
from tokenadmin.asksage.schemas import (
    AddPurchase,
    AskTokens,
    DistributionExecute,
    DistributionPreview,
    MyRequests,
    Nothing,
    OrgPurchases,
    OrgRequests,
    Review,
)
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import clock_of, db_of
from tokenadmin.distribution import service as distribution_service
from tokenadmin.distribution.schemas import DistributionOut, DistributionRequest
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.endpoints import _in_zone
from tokenadmin.organization.schemas import OrganizationCreate, OrganizationOut, PurchaseOut
from tokenadmin.token_request import service as token_request_service
from tokenadmin.token_request.schemas import TokenRequestOut, TokenRequestPage
from tokenadmin.tokens import Kind
from tokenadmin.usage.service import KindAvailability, availability
from tokenadmin.user import service as user_service

router = APIRouter()
NoFields = Annotated[Nothing, Depends(fields(Nothing))]


# --- the caller's own usage ----------------------------------------------------------------


async def _availability(request: Request, user_id: uuid.UUID) -> dict[Kind, KindAvailability]:
    """What the caller used, holds and may still use this period, of each kind."""
    now = clock_of(request).now()
    user = await db_of(request).read(lambda session: user_service.get(session, user_id))

    async def work(session: AsyncSession) -> dict[Kind, KindAvailability]:
        fresh = await user_service.get(session, user_id)
        org = await organization_service.get(session, fresh.org_id)
        return await availability(session, org, fresh, now)

    return await read(request, user.org_id, work)


@router.post("/count-monthly-tokens")
async def count_monthly_tokens(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The inference tokens the caller used this period."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.inference].used)


@router.post("/count-monthly-teach-tokens")
async def count_monthly_teach_tokens(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The training tokens the caller used this period."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.training].used)


@router.post("/count-monthly-tokens-left-with-org")
async def count_monthly_tokens_left_with_org(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """The inference tokens the caller may still use: min(their remaining, the
    organization's), as metering counts it; `training` beside it, the same for training."""
    kinds = await _availability(request, member(principal))
    return answer(kinds[Kind.inference].available, training=kinds[Kind.training].available)


# --- token requests ------------------------------------------------------------------------


@router.post("/request-tokens")
async def request_tokens(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[AskTokens, Depends(fields(AskTokens))],
) -> JSONResponse:
    """Ask the administrators for more tokens of a kind, with a reason (pending until decided)."""
    user_id = member(principal)

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        asker = await user_service.get(session, user_id)
        org = await organization_service.lock_for_change(session, act, asker.org_id)
        user = await user_service.get(session, user_id)
        return await token_request_service.ask(
            session, act, org, user, body.kind, body.tokens, body.reason
        )

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/get-my-token-requests")
async def get_my_token_requests(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[MyRequests, Depends(fields(MyRequests))],
) -> JSONResponse:
    """The caller's token requests in every state, newest first."""
    user_id = member(principal)

    async def work(session: AsyncSession) -> TokenRequestPage:
        user = await user_service.get(session, user_id)
        query = token_request_service.RequestQuery(
            org_id=user.org_id,
            user_id=user.id,
            state=body.state,
            kind=None if body.kind is None else body.kind.value,
            limit=body.limit,
            offset=body.start,
        )
        return await token_request_service.search(session, query)

    return answer(await db_of(request).read(work))


@router.post("/admin-get-token-requests")
async def admin_get_token_requests(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrgRequests, Depends(fields(OrgRequests))],
) -> JSONResponse:
    """The organization's token requests, newest first: pending ones unless `state` says
    otherwise (`any`: every state)."""
    org_id = admin_org(principal, body.org_id)

    async def work(session: AsyncSession) -> TokenRequestPage:
        user_id = None
        if body.user is not None:
            user_id = (await user_service.find_by_ref(session, org_id, body.user)).id
        query = token_request_service.RequestQuery(
            org_id=org_id,
            user_id=user_id,
            state=None if body.state == "any" else body.state,
            kind=None if body.kind is None else body.kind.value,
            limit=body.limit,
            offset=body.start,
        )
        return await token_request_service.search(session, query)

    return answer(await db_of(request).read(work))


@router.post("/admin-review-token-request")
async def admin_review_token_request(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[Review, Depends(fields(Review))],
) -> JSONResponse:
    """Approve (possibly another amount: `tokens`) or deny (with a `note`) a pending request."""
    found, _ = await db_of(request).read(lambda s: token_request_service.get(s, body.id))
    if principal.org_id is not None and found.org_id != principal.org_id:
        raise NotFound("Token request not found.")
    org_id = admin_org(principal, found.org_id if principal.is_operator else None)

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        if body.decision == "approve":
            return await token_request_service.approve(
                session, act, org, body.id, amount=body.tokens, note=body.note
            )
        return await token_request_service.deny(session, act, org, body.id, note=body.note or "")

    result: JSONResponse = await write(request, principal, work)
    return result


# --- distribution --------------------------------------------------------------------------


Step = Callable[[AsyncSession, Act, Organization], Awaitable[distribution_service.Distribution]]


async def _distribution(
    request: Request, principal: Principal, org_id: uuid.UUID, step: Step
) -> JSONResponse:
    """A distribution step with the organization locked, answered as `DistributionOut`."""

    async def work(session: AsyncSession, act: Act) -> DistributionOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        return (await step(session, act, org)).out()

    result: JSONResponse = await write(request, principal, work)
    return result


def _rules(body: DistributionPreview | DistributionExecute) -> DistributionRequest:
    return DistributionRequest.model_validate(body.model_dump(exclude={"org_id", "preview_token"}))


@router.post("/admin-token-distribution-preview")
async def admin_token_distribution_preview(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[DistributionPreview, Depends(fields(DistributionPreview))],
) -> JSONResponse:
    """Preview distributing the balance (nothing is saved); `preview_token` names it."""
    org_id = admin_org(principal, body.org_id)
    rules = _rules(body)

    async def step(
        session: AsyncSession, act: Act, org: Organization
    ) -> distribution_service.Distribution:
        return await distribution_service.preview(session, act, org, rules)

    return await _distribution(request, principal, org_id, step)


@router.post("/admin-token-distribution-execute")
async def admin_token_distribution_execute(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[DistributionExecute, Depends(fields(DistributionExecute))],
) -> JSONResponse:
    """Distribute the balance in one atomic change, or nothing; with `preview_token`, only if
    nothing changed since that preview."""
    org_id = admin_org(principal, body.org_id)
    rules = _rules(body)

    async def step(
        session: AsyncSession, act: Act, org: Organization
    ) -> distribution_service.Distribution:
        return await distribution_service.apply(session, act, org, rules, body.preview_token)

    return await _distribution(request, principal, org_id, step)


# --- operators -----------------------------------------------------------------------------


@router.post("/superadmin-get-all-organizations")
async def superadmin_get_all_organizations(
    request: Request, principal: PrincipalDep, _: NoFields
) -> JSONResponse:
    """Every organization (platform operators)."""
    principal.require_operator("read")
    orgs = await db_of(request).read(organization_repository.list_all)
    return answer([OrganizationOut.of(org) for org in orgs])


@router.post("/superadmin-add-organization")
async def superadmin_add_organization(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrganizationCreate, Depends(fields(OrganizationCreate))],
) -> JSONResponse:
    """Create an organization (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> OrganizationOut:
        return OrganizationOut.of(
            await organization_service.create(session, act, **body.model_dump())
        )

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/superadmin-add-organization-purchase")
async def superadmin_add_organization_purchase(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[AddPurchase, Depends(fields(AddPurchase))],
) -> JSONResponse:
    """Record a purchase of tokens for an organization, with an optional expiry (operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> PurchaseOut:
        org = await organization_service.lock_for_change(session, act, body.org_id)
        purchase = await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=body.inference_amount,
            training_amount=body.training_amount,
            purchased_on=body.purchased_on,
            expires_at=_in_zone(body.expires_at, org),
            payer=body.payer,
            note=body.note,
        )
        return PurchaseOut.of(purchase)

    result: JSONResponse = await write(request, principal, work)
    return result


@router.post("/superadmin-get-organization-purchases")
async def superadmin_get_organization_purchases(
    request: Request,
    principal: PrincipalDep,
    body: Annotated[OrgPurchases, Depends(fields(OrgPurchases))],
) -> JSONResponse:
    """An organization's purchases, expired ones included (operators)."""
    principal.require_operator("read")

    async def work(session: AsyncSession) -> list[PurchaseOut]:
        org = await organization_service.get(session, body.org_id)
        return [PurchaseOut.of(p) for p in await organization_service.list_purchases(session, org)]

    return answer(await db_of(request).read(work))
