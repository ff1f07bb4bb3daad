from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import revert as revert_service
from tokenadmin.allowance import service
from tokenadmin.allowance.schemas import (
    AllowanceChange,
    AllowancePreview,
    BatchOut,
    BatchPage,
    BatchQuery,
    RevertPreview,
    RevertRequest,
)
from tokenadmin.auth.audit import log_denials
from tokenadmin.deps import DatabaseDep, PrincipalDep, idempotent_write
from tokenadmin.organization import service as organization_service

router = APIRouter(
    prefix="/v1/organizations/{org_id}",
    tags=["allowances"],
    dependencies=[Depends(log_denials)],
)


@router.post("/allowances", response_model=AllowancePreview)
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


@router.get("/allowance-batches", response_model=BatchPage)
async def list_allowance_batches(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    query: Annotated[BatchQuery, Query()],
) -> BatchPage:
    """List the saved allowance changes (batches), newest first, each with whether it was
    reverted."""
    principal.require(org_id, "read")

    async def work(session: AsyncSession) -> BatchPage:
        org = await organization_service.get(session, org_id)
        found = await revert_service.batches(session, org, before=query.before, limit=query.limit)
        return BatchPage(
            batches=[BatchOut(**batch.out()) for batch in found],
            next_before=found[-1].id if len(found) == query.limit else None,
        )

    return await db.read(work)


@router.post("/allowance-batches/{batch}/revert", response_model=RevertPreview)
async def revert_allowance_batch(
    org_id: uuid.UUID,
    batch: uuid.UUID,
    body: RevertRequest,
    request: Request,
    principal: PrincipalDep,
) -> JSONResponse:
    """Revert a saved allowance change in one change: every row that can still be reverted,
    all or none; `dry_run` previews it, each row that can't be reverted with why."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> RevertPreview:
        plan = await revert_service.revert(
            session,
            act,
            org_id,
            str(batch),
            dry_run=body.dry_run,
            preview_token=body.preview_token,
        )
        return RevertPreview(**plan.out())

    return await idempotent_write(request, principal, work)
