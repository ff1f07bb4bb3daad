from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import log_denials
from tokenadmin.deps import PrincipalDep, idempotent_write
from tokenadmin.distribution import service
from tokenadmin.distribution.schemas import DistributionApply, DistributionOut, DistributionRequest
from tokenadmin.organization import service as organization_service

router = APIRouter(
    prefix="/v1/organizations/{org_id}/distribution",
    tags=["distribution"],
    dependencies=[Depends(log_denials)],
)


@router.post("/preview", response_model=DistributionOut)
async def preview_distribution(
    org_id: uuid.UUID, body: DistributionRequest, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Preview distributing the balance, of one kind or both: nothing is saved. The answer's
    `preview_token` names what it shows, for the apply."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> DistributionOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        return (await service.preview(session, act, org, body)).out()

    return await idempotent_write(request, principal, work)


@router.post("", response_model=DistributionOut)
async def apply_distribution(
    org_id: uuid.UUID, body: DistributionApply, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Distribute the balance: both kinds, every user, in one atomic change, or nothing.
    With `preview_token`, only if nothing changed since that preview (409 preview_stale)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> DistributionOut:
        org = await organization_service.lock_for_change(session, act, org_id)
        return (await service.apply(session, act, org, body, body.preview_token)).out()

    return await idempotent_write(request, principal, work)
