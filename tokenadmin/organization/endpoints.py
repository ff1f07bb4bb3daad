from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import ClockDep, DatabaseDep, PrincipalDep, idempotent_write, locked_write
from tokenadmin.models import Organization
from tokenadmin.organization import repository, service
from tokenadmin.organization.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    BalanceOut,
    OrganizationCreate,
    OrganizationOut,
    OrganizationUpdate,
    PurchaseCreate,
    PurchaseOut,
    PurchaseUpdate,
)

router = APIRouter(prefix="/v1/organizations", tags=["organizations"], dependencies=AUDITED)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=OrganizationOut)
async def create_organization(
    body: OrganizationCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Create an organization (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act) -> OrganizationOut:
        org = await service.create(session, act, **body.model_dump())
        return OrganizationOut.of(org)

    return await idempotent_write(request, principal, work, status_code=201)


@router.get("", response_model=list[OrganizationOut])
async def list_organizations(principal: PrincipalDep, db: DatabaseDep) -> list[OrganizationOut]:
    """List organizations: all of them for operators, one's own otherwise."""
    orgs = await db.read(repository.list_all)
    return [OrganizationOut.of(o) for o in orgs if principal.may(o.id, "read")]


@router.get("/{org_id}", response_model=OrganizationOut)
async def get_organization(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> OrganizationOut:
    """Read an organization and its policy."""
    principal.require(org_id, "read")
    return OrganizationOut.of(await db.read(lambda s: service.get(s, org_id)))


@router.patch("/{org_id}", response_model=OrganizationOut)
async def update_organization(
    org_id: uuid.UUID, body: OrganizationUpdate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Change an organization's name or policy (time zone, period, minimums, overallocation,
    auto-approval of token requests)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> OrganizationOut:
        changes = body.model_dump(exclude_unset=True)
        return OrganizationOut.of(await service.update_policy(session, act, org, changes))

    return await locked_write(request, principal, org_id, work)


@router.post("/{org_id}/purchases", status_code=status.HTTP_201_CREATED, response_model=PurchaseOut)
async def record_purchase(
    org_id: uuid.UUID, body: PurchaseCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Record a purchase of tokens, with an optional expiry (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act, org: Organization) -> PurchaseOut:
        purchase = await service.record_purchase(
            session,
            act,
            org,
            inference_amount=body.inference_amount,
            training_amount=body.training_amount,
            purchased_on=body.purchased_on,
            expires_at=body.expires_at,
            payer=body.payer,
            note=body.note,
        )
        return PurchaseOut.of(purchase)

    return await locked_write(request, principal, org_id, work, status_code=201)


@router.get("/{org_id}/purchases", response_model=list[PurchaseOut])
async def list_purchases(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> list[PurchaseOut]:
    """List an organization's purchases, expired ones included."""
    principal.require(org_id, "read")

    async def work(session: AsyncSession) -> list[PurchaseOut]:
        org = await service.get(session, org_id)
        return [PurchaseOut.of(p) for p in await service.list_purchases(session, org)]

    return await db.read(work)


@router.patch("/{org_id}/purchases/{purchase_id}", response_model=PurchaseOut)
async def change_purchase_expiry(
    org_id: uuid.UUID,
    purchase_id: uuid.UUID,
    body: PurchaseUpdate,
    request: Request,
    principal: PrincipalDep,
) -> JSONResponse:
    """Set, move or clear a purchase's expiry (platform operators)."""
    principal.require_operator()

    async def work(session: AsyncSession, act: Act, org: Organization) -> PurchaseOut:
        purchase = await service.change_purchase_expiry(
            session, act, org, purchase_id, body.expires_at
        )
        return PurchaseOut.of(purchase)

    return await locked_write(request, principal, org_id, work)


@router.get("/{org_id}/balance", response_model=BalanceOut)
async def get_balance(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> BalanceOut:
    """The token balance of both kinds: capacity, allocated, balance, used and reserved."""
    principal.require(org_id, "read")
    now = clock.now()
    await service.up_to_date(db, org_id, now)

    async def work(session: AsyncSession) -> BalanceOut:
        fresh = await service.get(session, org_id)
        return BalanceOut.of(await service.balance(session, fresh, now))

    return await db.read(work)


@router.post(
    "/{org_id}/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated
)
async def create_api_key(
    org_id: uuid.UUID, body: ApiKeyCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Create an API key for the organization; the key is in this answer only."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> ApiKeyCreated:
        await service.get(session, org_id)
        key, secret = await api_key_service.create(
            session, act, org_id=org_id, name=body.name, scopes=body.scopes
        )
        return ApiKeyCreated(**ApiKeyOut.of(key).model_dump(), key=secret)

    return await idempotent_write(request, principal, work, status_code=201)


@router.get("/{org_id}/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> list[ApiKeyOut]:
    """List the organization's API keys (never the keys themselves)."""
    principal.require(org_id, "admin")
    keys = await db.read(lambda s: api_key_service.list_keys(s, org_id))
    return [ApiKeyOut.of(k) for k in keys]


@router.delete("/{org_id}/api-keys/{key_id}", response_model=ApiKeyOut)
async def revoke_api_key(
    org_id: uuid.UUID, key_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Revoke an API key; it stops working at once."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> ApiKeyOut:
        return ApiKeyOut.of(await api_key_service.revoke(session, act, org_id, key_id))

    return await idempotent_write(request, principal, work)
