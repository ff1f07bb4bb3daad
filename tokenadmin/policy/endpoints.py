"""The allocation policy routes: thin callers of policy.service. Administrators of the
organization (keys with `admin`) and operators set, preview and run the policy, read its
log and give boosts; a member's own key lists their own boosts."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import AUDITED
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import ClockDep, DatabaseDep, Limit, Offset, PrincipalDep, act_of, locked_write
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service
from tokenadmin.policy import service
from tokenadmin.policy.schemas import (
    BoostIn,
    BoostOut,
    BoostPage,
    BoostState,
    KindPolicyOut,
    LogEntryOut,
    LogPage,
    PolicyIn,
    PolicyOut,
    PolicyUpdateOut,
    RunIn,
    RunOut,
)
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(
    prefix="/v1/organizations/{org_id}", tags=["allocation policy"], dependencies=AUDITED
)


def policy_out(org: Organization, policies: dict[Kind, service.KindPolicy]) -> PolicyOut:
    return PolicyOut(
        inference=KindPolicyOut(**policies[Kind.inference].out()),
        training=KindPolicyOut(**policies[Kind.training].out()),
        presets=service.presets_for(org),
    )


def run_out(result: service.Run) -> RunOut:
    return RunOut(**result.out())


@router.get("/policy", response_model=PolicyOut)
async def get_policy(org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep) -> PolicyOut:
    """The allocation policy of both kinds (the defaults, off, for a kind never set)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession) -> PolicyOut:
        org = await organization_service.get(session, org_id)
        return policy_out(org, await service.current(session, org))

    return await db.read(work)


@router.put("/policy", response_model=PolicyUpdateOut)
async def set_policy(
    org_id: uuid.UUID, body: PolicyIn, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Set the policy of one kind or both (a preset, custom numbers, on or off); the answer
    previews what it would do now. `dry_run` only previews."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> PolicyUpdateOut:
        result = await service.update(session, act, org, body.changes(), dry_run=body.dry_run)
        shown = policy_out(org, result.policies)
        return PolicyUpdateOut(
            **shown.model_dump(), applied=result.applied, preview=run_out(result.preview)
        )

    return await locked_write(request, principal, org_id, work)


@router.get("/policy/preview", response_model=RunOut)
async def preview_policy(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> RunOut:
    """What the saved policy would do if run now: every move (user, kind, rule, from, to,
    why) and every user it would skip, with why. Nothing is written."""
    principal.require(org_id, "admin")
    act = act_of(principal, clock)

    async def work(session: AsyncSession) -> RunOut:
        org = await organization_service.get(session, org_id)
        return run_out(await service.run(session, act, org, dry_run=True))

    return await db.read(work)


@router.post("/policy/run", response_model=RunOut)
async def run_policy(
    org_id: uuid.UUID, body: RunIn, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Run the policy now (reclamation included, whatever its schedule), in one change;
    `dry_run` only previews."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> RunOut:
        return run_out(await service.run(session, act, org, dry_run=body.dry_run))

    return await locked_write(request, principal, org_id, work)


@router.get("/policy/log", response_model=LogPage)
async def policy_log(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> LogPage:
    """What the policy did, newest first: every move of its runs, boosts and their ends."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession) -> LogPage:
        org = await organization_service.get(session, org_id)
        rows, total = await service.log(session, org, limit=limit, offset=offset)
        moves = [LogEntryOut.of(move, user) for move, user in rows]
        return LogPage(moves=moves, total=total, limit=limit, offset=offset)

    return await db.read(work)


@router.post("/boosts", status_code=status.HTTP_201_CREATED, response_model=BoostOut)
async def add_boost(
    org_id: uuid.UUID, body: BoostIn, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Raise one user's allowance of a kind until `ends_at`, at once; it is taken back by
    itself when it ends (never below what they used and reserved)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> BoostOut:
        result = await service.add_boost(
            session,
            act,
            org,
            user_ref=body.user,
            kind=body.kind,
            amount=body.amount,
            ends_at=body.ends_at,
            reason=body.reason,
        )
        return BoostOut.of(result.boost, result.user)

    return await locked_write(request, principal, org_id, work, status_code=201)


def _own_boosts_only(principal: Principal, org_id: uuid.UUID) -> uuid.UUID | None:
    """None for an administrator (every boost); a member's own id for their own key."""
    if principal.may(org_id, "admin"):
        return None
    if principal.user_id is not None and principal.org_id == org_id:
        return principal.user_id
    principal.require(org_id, "admin")  # raises: 403 here, 404 for another organization
    raise NotFound("Organization not found.")  # pragma: no cover


@router.get("/boosts", response_model=BoostPage)
async def list_boosts(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    state: Annotated[
        BoostState | Literal["any"], Query(description="`any` lists both states.")
    ] = "active",
    user_id: uuid.UUID | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> BoostPage:
    """Boosts, active ones first by their end; of one user with `user_id` (404
    user_not_found for someone not in the organization). A member's own key lists their
    own."""
    own = _own_boosts_only(principal, org_id)

    async def work(session: AsyncSession) -> BoostPage:
        org = await organization_service.get(session, org_id)
        if user_id is not None and own is None:
            named = await user_repository.get(session, user_id)
            if named is None or named.org_id != org.id:
                raise NotFound("No such user in this organization.", code="user_not_found")
        rows, total = await service.boosts(
            session,
            org,
            user_id=own or user_id,
            state=None if state == "any" else state,
            limit=limit,
            offset=offset,
        )
        found = [BoostOut.of(boost, user) for boost, user in rows]
        return BoostPage(boosts=found, total=total, limit=limit, offset=offset)

    return await db.read(work)


@router.post("/boosts/{boost_id}/end", response_model=BoostOut)
async def end_boost(
    org_id: uuid.UUID, boost_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """End a boost now: taken back as at its end (never below what was used)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> BoostOut:
        result = await service.end_boost(session, act, org, boost_id)
        return BoostOut.of(result.boost, result.user)

    return await locked_write(request, principal, org_id, work)
