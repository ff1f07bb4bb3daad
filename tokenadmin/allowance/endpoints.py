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
        result = await service.change(
            session, act, org_id, body.changes, dry_run=body.dry_run, reason=body.reason
        )
        return AllowancePreview(**result.preview())

    return await idempotent_write(request, principal, work)
