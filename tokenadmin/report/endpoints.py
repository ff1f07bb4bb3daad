"""Forecasts and usage reports over the REST API: thin callers of report/service.py.

Who may read: an organization's admin and read keys (and operators) anything in it; a
signed-in person their own user's forecast and report."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import ClockDep, DatabaseDep, PrincipalDep
from tokenadmin.organization import service as organization_service
from tokenadmin.report import service
from tokenadmin.report.schemas import OrgForecastOut, UsageReportOut, UserForecastOut
from tokenadmin.schemas import Text, written_out
from tokenadmin.user import service as user_service
from tokenadmin.user.service import find_by_ref

router = APIRouter(tags=["reports"], dependencies=AUDITED)

ReportDay = Annotated[date, written_out("2026-03-31")]
"""A day of a report's range, written out as YYYY-MM-DD (a number is refused)."""

CSV_ANSWER: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report; as CSV with `format=csv`.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    }
}


@router.get("/v1/users/{user_id}/forecast", response_model=UserForecastOut)
async def get_user_forecast(
    user_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep, clock: ClockDep
) -> UserForecastOut:
    """When the user runs out of each kind at their pace this period (without periods: of
    the last 30 days), with the window, the tokens and the days of usage it rests on."""

    async def work(session: AsyncSession) -> UserForecastOut:
        user, org = await user_service.visible(session, principal, user_id, "read")
        return UserForecastOut.of(await service.user_forecast(session, org, user, clock.now()))

    return await db.read(work)


@router.get("/v1/organizations/{org_id}/forecast", response_model=OrgForecastOut)
async def get_org_forecast(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    users: Annotated[
        int,
        Query(ge=0, le=service.MAX_USERS, description="List this many users, soonest first."),
    ] = 0,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> OrgForecastOut:
    """When the organization uses up its capacity of each kind at its pace; with `users`,
    also its users who run out soonest."""
    principal.require(org_id, "read")
    now = clock.now()
    await organization_service.up_to_date(db, org_id, now)

    async def work(session: AsyncSession) -> OrgForecastOut:
        org = await organization_service.get(session, org_id)
        found = await service.org_forecast(session, org, now, users=users, offset=offset)
        return OrgForecastOut.of(found)

    return await db.read(work)


@router.get(
    "/v1/organizations/{org_id}/usage-report", response_model=UsageReportOut, responses=CSV_ANSWER
)
async def get_usage_report(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    clock: ClockDep,
    granularity: Literal["day", "month"] = "day",
    from_: Annotated[
        ReportDay | None,
        Query(alias="from", description="First day (in the organization's zone)."),
    ] = None,
    until: Annotated[ReportDay | None, Query(description="Last day, included.")] = None,
    user: Annotated[
        Text | None, Query(max_length=320, description="Only this user (id or email).")
    ] = None,
    group_by: Annotated[Literal["model"] | None, Query(description="Also per model.")] = None,
    format: Annotated[Literal["json", "csv"], Query(description="csv: text/csv.")] = "json",
) -> Response | UsageReportOut:
    """Usage per day or per month, per kind and optionally per model, of the organization or
    one of its users, as JSON or CSV."""
    if user is None or principal.org_id != org_id or principal.user_id is None:
        principal.require(org_id, "read")

    async def work(session: AsyncSession) -> service.UsageReport:
        org = await organization_service.get(session, org_id)
        who = await find_by_ref(session, org.id, user) if user is not None else None
        if who is None or who.id != principal.user_id:
            principal.require(org_id, "read")
        return await service.usage_report(
            session,
            org,
            clock.now(),
            granularity=granularity,
            first=from_,
            last=until,
            user=who,
            by_model=group_by == "model",
        )

    report = await db.read(work)
    return csv_answer(report) if format == "csv" else UsageReportOut.of(report)


def csv_answer(report: service.UsageReport) -> Response:
    """A report as a CSV download (the dashboard's too)."""
    return Response(
        report.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{report.csv_filename}"'},
    )
