"""The REST API of distributing the balance: a preview, and the atomic apply."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import AUDITED
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import PrincipalDep, locked_write
from tokenadmin.distribution import service
from tokenadmin.distribution.schemas import DistributionApply, DistributionOut, DistributionRequest
from tokenadmin.models import Organization

PATH = "/v1/organizations/{org_id}/distribution"
router = APIRouter(tags=["distribution"], dependencies=AUDITED)
Step = Callable[[AsyncSession, Act, Organization], Awaitable[service.Distribution]]


async def _answer(
    org_id: uuid.UUID, request: Request, principal: Principal, step: Step
) -> JSONResponse:
    """An administrator of the organization, with it locked for change, in one idempotent
    write; the service's distribution answered as `DistributionOut`."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> DistributionOut:
        return (await step(session, act, org)).out()

    return await locked_write(request, principal, org_id, work)


@router.post(f"{PATH}/preview", response_model=DistributionOut)
async def preview_distribution(
    org_id: uuid.UUID, body: DistributionRequest, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Preview distributing the balance, of one kind or both: nothing is saved. The answer's
    `preview_token` names what it shows, for the apply; `expiring`, the purchases expiring
    soon whose expiry would leave the organization over-allocated after it."""
    return await _answer(
        org_id, request, principal, lambda s, act, org: service.preview(s, act, org, body)
    )


@router.post(PATH, response_model=DistributionOut)
async def apply_distribution(
    org_id: uuid.UUID, body: DistributionApply, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Distribute the balance: both kinds, every user, in one atomic change, or nothing.
    With `preview_token`, only if nothing changed since that preview (409 preview_stale)."""
    return await _answer(
        org_id,
        request,
        principal,
        lambda s, act, org: service.apply(s, act, org, body, body.preview_token),
    )
