"""One user's page: allowances, usage per day and per month as charts, open reservations,
their journal and a forecast of when they run out. Members see the same on /me.

The figures come from report/service.py, as the API's and the CLI's do; this only draws."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.charts import Series, bar_chart
from tokenadmin.dashboard.web import ViewerDep, render, require_org, up_to_date
from tokenadmin.errors import NotFound
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.report import service as report_service
from tokenadmin.report.endpoints import csv_answer
from tokenadmin.report.service import UsageReport
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind, Period, current_period
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.service import availability
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
JOURNAL_ROWS = 50
KIND_LABELS = {kind: f"{ALLOWANCE_LABEL[kind]} · {kind.value}" for kind in Kind}
T = TypeVar("T")


async def for_user(
    request: Request,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    work: Callable[[AsyncSession, Organization, User, datetime], Awaitable[T]],
) -> T:
    """Run `work` on a user of an organization brought up to date (the caller has checked
    who may see them)."""
    db, now = await up_to_date(request, org_id)

    async def load(session: AsyncSession) -> T:
        org = await organization_service.get(session, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        return await work(session, org, user, now)

    return await db.read(load)


def _chart(
    chart_id: str,
    title: str,
    report: UsageReport,
    labels: Sequence[str],
    x_label: str,
    tick_labels: Sequence[str] | None = None,
) -> Markup:
    series = [Series(kind.value, report.series(kind), kind.value) for kind in Kind]
    return bar_chart(chart_id, title, labels, series, x_label=x_label, tick_labels=tick_labels)


async def user_view(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> dict[str, Any]:
    """Everything the user page and the member's own page show."""
    daily = await report_service.usage_report(session, org, now, granularity="day", user=user)
    monthly = await report_service.usage_report(session, org, now, granularity="month", user=user)
    forecast = await report_service.user_forecast(session, org, user, now)
    months = monthly.buckets
    zone = f"({org.time_zone})"
    return {
        "org": org,
        "user": user,
        "kinds": await availability(session, org, user, now),
        "kind_labels": KIND_LABELS,
        "daily_chart": _chart(
            "chart-days",
            f"Usage per day of {user.email}, this period",
            daily,
            [d.strftime("%d %b") for d in daily.buckets],
            f"day {zone}",
        ),
        "monthly_chart": _chart(
            "chart-months",
            f"Usage per month of {user.email}, past year",
            monthly,
            [m.strftime("%b %Y") for m in months],
            f"month {zone}",
            [m.strftime("%b %Y" if m.month == 1 or m == months[0] else "%b") for m in months],
        ),
        "forecasts": forecast.kinds if user.active else {},
        "period_start": None if org.period == Period.none else current_period(org, now),
        "period_end": forecast.window.period_end,
        "tz": ZoneInfo(org.time_zone),
    }


async def usage_csv(
    session: AsyncSession,
    org: Organization,
    user: User,
    now: datetime,
    *,
    bucket: Literal["day", "month"],
) -> Response:
    """The usage charts' figures as CSV: date, inference, training."""
    report = await report_service.usage_report(session, org, now, granularity=bucket, user=user)
    return csv_answer(report)


@router.get("/orgs/{org_id}/users/{user_id}")
async def user_page(
    request: Request, org_id: uuid.UUID, user_id: uuid.UUID, viewer: ViewerDep
) -> HTMLResponse:
    require_org(viewer, org_id, "read")

    async def load(
        session: AsyncSession, org: Organization, user: User, now: datetime
    ) -> dict[str, Any]:
        view = await user_view(session, org, user, now)
        view["reservations"] = await usage_repository.open_reservations_of(session, user.id)
        view["entries"] = await journal_repository.list_entries(
            session, JournalFilter(org_id=org.id, user_id=user.id, limit=JOURNAL_ROWS)
        )
        return view

    return render(
        request, "user_page.html", viewer, **await for_user(request, org_id, user_id, load)
    )


@router.get("/orgs/{org_id}/users/{user_id}/usage-per-{bucket}.csv")
async def user_usage_csv(
    request: Request,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    bucket: Literal["day", "month"],
    viewer: ViewerDep,
) -> Response:
    """The usage charts' figures as CSV: date, inference, training."""
    require_org(viewer, org_id, "read")
    return await for_user(request, org_id, user_id, partial(usage_csv, bucket=bucket))
