from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance.service import allowances_of
from tokenadmin.auth.audit import log_denials
from tokenadmin.auth.principal import Principal
from tokenadmin.database import Database
from tokenadmin.deps import (
    ClockDep,
    DatabaseDep,
    PrincipalDep,
    csv_download,
    idempotent_write,
    locked_write,
)
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.report import service as report_service
from tokenadmin.tokens import Kind
from tokenadmin.usage.service import availability
from tokenadmin.user import csv_io, repository, service
from tokenadmin.user.csv_schemas import ImportResult, UserImport
from tokenadmin.user.schemas import (
    Reactivate,
    UsageHistoryOut,
    UsagePoint,
    UserBalanceOut,
    UserCreate,
    UserListParams,
    UserOut,
    UserPage,
    UserUpdate,
)

AUDITED = [Depends(log_denials)]
org_router = APIRouter(
    prefix="/v1/organizations/{org_id}/users", tags=["users"], dependencies=AUDITED
)
router = APIRouter(prefix="/v1/users", tags=["users"], dependencies=AUDITED)
table_router = APIRouter(prefix="/v1/organizations/{org_id}", tags=["users"], dependencies=AUDITED)


@org_router.get("", response_model=UserPage)
async def list_users(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    query: Annotated[UserListParams, Query()],
) -> UserPage:
    """Search, filter, sort and page through an organization's users."""
    principal.require(org_id, "read")

    async def work(session: AsyncSession) -> UserPage:
        org = await organization_service.get(session, org_id)
        return await service.search(session, org, clock.now(), query)

    return await db.read(work)


@org_router.post("", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def create_user(
    org_id: uuid.UUID, body: UserCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Add a user; they get the organization's minimum from the balance unless told more."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> UserOut:
        spec = service.NewUser(**body.model_dump())
        user = await service.create(session, act, org, spec)
        return UserOut.of(user, current_period(org, act.now))

    return await locked_write(request, principal, org_id, work, status_code=201)


async def users_csv(db: Database, org_id: uuid.UUID, now: datetime) -> StreamingResponse:
    """The user table as a CSV download (the API's and the dashboard's export)."""
    await organization_service.up_to_date(db, org_id, now)
    org = await db.read(lambda session: organization_service.get(session, org_id))
    return await csv_download(
        db,
        lambda session: csv_io.export_chunks(session, org, now),
        csv_io.export_filename(org, now),
    )


@table_router.get(
    "/users.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "The user table as CSV."}},
)
async def export_users_csv(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> StreamingResponse:
    """The user table as CSV: email, name, role, status, max_tokens, max_train_tokens,
    this period's inference_used and training_used, last_activity_at (the columns an import
    reads back)."""
    principal.require(org_id, "read")
    return await users_csv(db, org_id, clock.now())


@table_router.post("/users/import", response_model=ImportResult)
async def import_users_csv(
    org_id: uuid.UUID, body: UserImport, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Create users and change allowances, names and roles from a CSV of the user table in
    one atomic change: every row is checked, and nothing is saved unless every row is
    accepted (`dry_run` previews). Refused rows are listed with their line and reason."""
    principal.require(org_id, "admin")
    rows = csv_io.read_upload(body.csv)

    async def work(session: AsyncSession, act: Act) -> ImportResult:
        result = await csv_io.import_users(session, act, org_id, rows, dry_run=body.dry_run)
        if not result.accepted and not body.dry_run:
            raise csv_io.refusal(result)
        return result

    return await idempotent_write(request, principal, work)


@router.get("/{user_id}", response_model=UserOut)
async def get_user(
    user_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> UserOut:
    """Read a user with their allowances and this period's usage."""

    async def work(session: AsyncSession) -> UserOut:
        user, org = await service.visible(session, principal, user_id, "read")
        return UserOut.of(user, current_period(org, clock.now()))

    return await db.read(work)


async def _user_admin(user_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep) -> Principal:
    """The caller, once allowed to change this user. Checked before `idempotent_write`,
    which answers a replayed key without running the change, and so its checks, again."""
    await db.read(lambda session: service.visible(session, principal, user_id, "admin"))
    return principal


UserAdminDep = Annotated[Principal, Depends(_user_admin)]


async def _locked(
    session: AsyncSession, act: Act, principal: Principal, user_id: uuid.UUID
) -> tuple[User, Organization]:
    user, _ = await service.visible(session, principal, user_id, "admin")
    org = await organization_service.lock_for_change(session, act, user.org_id)
    fresh = await repository.get(session, user_id, org_id=org.id)
    assert fresh is not None
    return fresh, org


@router.patch("/{user_id}", response_model=UserOut)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, request: Request, principal: UserAdminDep
) -> JSONResponse:
    """Change a user's name, role, Max Tokens and Max Train Tokens in one atomic step."""

    async def work(session: AsyncSession, act: Act) -> UserOut:
        user, org = await _locked(session, act, principal, user_id)
        allowances = allowances_of(body.max_tokens, body.max_train_tokens)
        await service.update(
            session,
            act,
            org,
            user,
            name=body.name,
            role=body.role,
            allowances=allowances,
            expected_version=body.expected_version,
            reason=body.reason,
        )
        return UserOut.of(user, current_period(org, act.now))

    return await idempotent_write(request, principal, work)


@router.post("/{user_id}/deactivate", response_model=UserOut)
async def deactivate_user(
    user_id: uuid.UUID, request: Request, principal: UserAdminDep
) -> JSONResponse:
    """Deactivate a user: usage stops, reservations are released, the unused allowance returns."""

    async def work(session: AsyncSession, act: Act) -> UserOut:
        user, org = await _locked(session, act, principal, user_id)
        await service.deactivate(session, act, org, user)
        return UserOut.of(user, current_period(org, act.now))

    return await idempotent_write(request, principal, work)


@router.post("/{user_id}/reactivate", response_model=UserOut)
async def reactivate_user(
    user_id: uuid.UUID, request: Request, principal: UserAdminDep, body: Reactivate | None = None
) -> JSONResponse:
    """Reactivate a user with at least the organization's minimums, from the balance."""

    async def work(session: AsyncSession, act: Act) -> UserOut:
        user, org = await _locked(session, act, principal, user_id)
        wanted = {} if body is None else allowances_of(body.max_tokens, body.max_train_tokens)
        await service.reactivate(session, act, org, user, wanted)
        return UserOut.of(user, current_period(org, act.now))

    return await idempotent_write(request, principal, work)


@router.get("/{user_id}/balance", response_model=UserBalanceOut)
async def get_user_balance(
    user_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> UserBalanceOut:
    """What a user may still use of each kind: min(user remaining, organization remaining)."""
    now = clock.now()

    async def visible(session: AsyncSession) -> User:
        user = await repository.get(session, user_id)
        if user is None or not (
            principal.user_id == user.id
            or principal.may(user.org_id, "read")
            or principal.may(user.org_id, "usage")
        ):
            raise NotFound("User not found.")
        return user

    found = await db.read(visible)
    await organization_service.up_to_date(db, found.org_id, now)

    async def work(session: AsyncSession) -> UserBalanceOut:
        user = await visible(session)
        org = await organization_service.get(session, user.org_id)
        kinds = await availability(session, org, user, now)
        return UserBalanceOut.of(user, org, kinds, now)

    return await db.read(work)


@router.get("/{user_id}/usage", response_model=UsageHistoryOut)
async def get_usage_history(
    user_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    granularity: Literal["day", "month"] = "day",
) -> UsageHistoryOut:
    """Usage per day of this period, or per month of the past year, in the organization's zone."""
    now = clock.now()

    async def work(session: AsyncSession) -> UsageHistoryOut:
        user, org = await service.visible(session, principal, user_id, "read")
        report = await report_service.usage_report(
            session, org, now, granularity=granularity, user=user
        )
        points = [
            UsagePoint(
                start=row.start,
                inference=row.tokens[Kind.inference],
                training=row.tokens[Kind.training],
            )
            for row in report.rows
            if any(row.tokens.values())
        ]
        return UsageHistoryOut(user_id=user.id, granularity=granularity, points=points)

    return await db.read(work)
