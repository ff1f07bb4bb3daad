from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

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
from tokenadmin.rows import gc_paused

router = APIRouter(
    prefix="/v1/organizations/{org_id}",
    tags=["allowances"],
    dependencies=[Depends(log_denials)],
)


async def _collector_paused() -> AsyncIterator[None]:
    """Python's cyclic garbage collector off from the body's validation to the answer: a
    change of 10,000 users makes a model per row and a dict per change, and the collections
    they trigger walk every object of the process (0.1 to 0.3 s of such a change, most of
    it one full collection during the validation). See rows.gc_paused."""
    with gc_paused():
        yield


@router.post(
    "/allowances",
    response_model=AllowancePreview,
    # Solved before the body: FastAPI validates the body after the route's dependencies.
    dependencies=[Depends(_collector_paused)],
)
async def change_allowances(
    org_id: uuid.UUID, body: AllowanceChange, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Change Max Tokens and Max Train Tokens of many users at once: all rows or none."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> dict[str, Any]:
        result = await service.change(
            session, act, org_id, body.changes, dry_run=body.dry_run, reason=body.reason
        )
        # `preview` is already the answer's JSON, in AllowancePreview's shape and key order
        # (plain strings, numbers and booleans): a model of it and its dump again cost
        # 0.05 s for 10,000 changes and changed nothing.
        return result.preview()

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
