"""One user's page: allowances, usage per day and per month as charts, open reservations,
their journal and a forecast of when they run out. Members see the same on /me."""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.charts import Series, bar_chart
from tokenadmin.dashboard.web import ViewerDep, render, require_org
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period, current_period_end
from tokenadmin.tokens import Kind, Period
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.service import KindAvailability, availability
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
JOURNAL_ROWS = 50
KIND_LABELS = {
    Kind.inference: "Max Tokens · inference",
    Kind.training: "Max Train Tokens · training",
}


PACE_WINDOW = timedelta(days=30)
"""Without periods (prepaid), the pace is that of the last 30 days."""
HORIZON = timedelta(days=3650)
"""Without periods, a forecast further than ten years away is no forecast."""
HORIZON_SECONDS = int(HORIZON.total_seconds())


@dataclass(frozen=True)
class Forecast:
    """When `remaining` reaches 0 at the current pace."""

    pace_per_day: int
    runs_out_on: datetime | None
    """None: no usage to make a pace of, or not before the period ends."""


def forecast(
    used: int, elapsed: timedelta, remaining: int, now: datetime, end: datetime | None
) -> Forecast:
    """`used` tokens over `elapsed` make the pace; at that pace `remaining` reaches 0 when?

    A user's forecast passes their remaining allowance; the organization's passes its
    capacity less its usage. Reaching 0 exactly at `end` (or beyond `HORIZON`) counts as
    not running out.
    """
    seconds = int(elapsed.total_seconds())
    if used <= 0 or seconds <= 0:
        return Forecast(0, None)
    pace_per_day = used * 86_400 // seconds
    # Integer arithmetic: remaining / (used / seconds) seconds from now.
    delay = timedelta(seconds=min(max(0, remaining) * seconds // used, HORIZON_SECONDS))
    runs_out = now + delay
    if delay >= HORIZON or (end is not None and runs_out >= end):
        return Forecast(pace_per_day, None)
    return Forecast(pace_per_day, runs_out)


def pace_since(org: Organization, now: datetime) -> datetime:
    """Where the pace is measured from: the start of the period, or 30 days ago."""
    return now - PACE_WINDOW if org.period == Period.none else current_period(org, now)


def _buckets(rows: Any, zone: ZoneInfo, keys: list[datetime], month: bool) -> dict[Kind, list[int]]:
    """Usage per day or per month in the organization's zone, the same bucketing as the
    API's usage history (GET /v1/users/{id}/usage)."""
    sums: dict[datetime, dict[str, int]] = defaultdict(lambda: {"inference": 0, "training": 0})
    for moment, kind, used in rows:
        local = moment.astimezone(zone)
        key = datetime(local.year, local.month, 1 if month else local.day, tzinfo=zone)
        sums[key][kind] += used
    return {kind: [sums[k][kind.value] if k in sums else 0 for k in keys] for kind in Kind}


@dataclass(frozen=True)
class Usage:
    """A user's usage per day this period (the last 31 days when prepaid) and per month for
    a year, in the organization's zone: what the charts draw and the CSV files hold."""

    days: list[datetime]
    per_day: dict[Kind, list[int]]
    months: list[datetime]
    per_month: dict[Kind, list[int]]
    pace_used: dict[Kind, int]
    """Used since `pace_since()`: the pace of the forecast."""

    def csv(self, bucket: Literal["day", "month"]) -> str:
        keys, sums, shape = (
            (self.days, self.per_day, "%Y-%m-%d")
            if bucket == "day"
            else (self.months, self.per_month, "%Y-%m")
        )
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["date", "inference", "training"])
        for index, key in enumerate(keys):
            writer.writerow(
                [key.strftime(shape), sums[Kind.inference][index], sums[Kind.training][index]]
            )
        return buffer.getvalue()


async def usage_of(session: AsyncSession, org: Organization, user: User, now: datetime) -> Usage:
    zone = ZoneInfo(org.time_zone)
    start = current_period(org, now)
    local_now = now.astimezone(zone)
    day_since = start if org.period != "none" else now - timedelta(days=31)
    first_day = day_since.astimezone(zone)
    days: list[datetime] = []
    day = datetime(first_day.year, first_day.month, first_day.day, tzinfo=zone)
    while day.date() <= local_now.date():
        days.append(day)
        day = datetime.combine(day.date() + timedelta(days=1), datetime.min.time(), zone)
    months: list[datetime] = []
    year, month = local_now.year - 1, local_now.month
    for _ in range(13):
        months.append(datetime(year, month, 1, tzinfo=zone))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    month_since = months[0]
    paced_from = pace_since(org, now)
    rows = await usage_repository.usage_by_bucket(
        session, user.id, min(day_since, month_since, paced_from)
    )
    pace_used = {kind: 0 for kind in Kind}
    for moment, kind, used in rows:
        if moment >= paced_from:
            pace_used[Kind(kind)] += used
    return Usage(
        days=days,
        per_day=_buckets([r for r in rows if r[0] >= day_since], zone, days, False),
        months=months,
        per_month=_buckets([r for r in rows if r[0] >= month_since], zone, months, True),
        pace_used=pace_used,
    )


async def user_view(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> dict[str, Any]:
    """Everything the user page and the member's own page show."""
    zone = ZoneInfo(org.time_zone)
    start = current_period(org, now)
    end = current_period_end(org, now)
    kinds: dict[Kind, KindAvailability] = await availability(session, org, user, now)
    usage = await usage_of(session, org, user, now)
    days, months = usage.days, usage.months
    daily = bar_chart(
        "chart-days",
        f"Usage per day of {user.email}, this period",
        [d.strftime("%d %b") for d in days],
        [
            Series("inference", usage.per_day[Kind.inference], "inference"),
            Series("training", usage.per_day[Kind.training], "training"),
        ],
        x_label=f"day ({org.time_zone})",
    )
    monthly = bar_chart(
        "chart-months",
        f"Usage per month of {user.email}, past year",
        [m.strftime("%b %Y") for m in months],
        [
            Series("inference", usage.per_month[Kind.inference], "inference"),
            Series("training", usage.per_month[Kind.training], "training"),
        ],
        x_label=f"month ({org.time_zone})",
        tick_labels=[
            m.strftime("%b %Y" if m.month == 1 or m == months[0] else "%b") for m in months
        ],
    )
    elapsed = now - pace_since(org, now)
    forecasts = {
        kind: forecast(usage.pace_used[kind], elapsed, k.remaining, now, end)
        for kind, k in kinds.items()
        if user.active
    }
    return {
        "org": org,
        "user": user,
        "kinds": kinds,
        "kind_labels": KIND_LABELS,
        "daily_chart": daily,
        "monthly_chart": monthly,
        "forecasts": forecasts,
        "period_start": None if org.period == "none" else start,
        "period_end": end,
        "tz": zone,
    }


def usage_csv(usage: Usage, bucket: Literal["day", "month"], email: str) -> Response:
    name = f"usage-per-{bucket}-{email.split('@')[0]}.csv"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Response(
        usage.csv(bucket),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{safe}"'},
    )


@router.get("/orgs/{org_id}/users/{user_id}")
async def user_page(
    request: Request, org_id: uuid.UUID, user_id: uuid.UUID, viewer: ViewerDep
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db, now = db_of(request), clock_of(request).now()
    await organization_service.up_to_date(db, org_id, now)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        view = await user_view(session, org, user, now)
        view["reservations"] = await usage_repository.open_reservations_of(session, user.id)
        view["entries"] = await journal_repository.list_entries(
            session, JournalFilter(org_id=org.id, user_id=user.id, limit=JOURNAL_ROWS)
        )
        return view

    return render(request, "user_page.html", viewer, **await db.read(load))


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
    db, now = db_of(request), clock_of(request).now()

    async def load(session: AsyncSession) -> tuple[Usage, str]:
        org = await organization_service.get(session, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        return await usage_of(session, org, user, now), user.email

    usage, email = await db.read(load)
    return usage_csv(usage, bucket, email)
