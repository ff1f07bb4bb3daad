from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service
from tokenadmin.allowance.schemas import AllowanceChange, AllowancePreview
from tokenadmin.auth.audit import log_denials
from tokenadmin.deps import PrincipalDep, idempotent_write
from tokenadmin.organization import service as organization_service

router = APIRouter(
    prefix="/v1/organizations/{org_id}/allowances",
    tags=["allowances"],
    dependencies=[Depends(log_denials)],
)


@router.post("", response_model=AllowancePreview)
async def change_allowances(
    org_id: uuid.UUID, body: AllowanceChange, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Change Max Tokens and Max Train Tokens of many users at once: all rows or none."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> AllowancePreview:
        org = await organization_service.lock_for_change(session, act, org_id)
        requests = await service.resolve(session, org, body.changes)
        plan = service.plan(org, requests, act)
        if body.dry_run:
            return AllowancePreview(applied=False, dry_run=True, **service.preview(plan))
        await service.apply(session, act, org, plan, reason=body.reason)
        return AllowancePreview(applied=True, dry_run=False, **service.preview(plan))

    return await idempotent_write(request, principal, work)
