"""One user's page: allowances, usage per day and per month as charts, open reservations,
their journal and a forecast of when they run out. Members see the same on /me."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.charts import Series, bar_chart
from tokenadmin.dashboard.web import ViewerDep, render, require_org
from tokenadmin.deps import get_clock, get_db
from tokenadmin.errors import NotFound
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.tokens import Kind, period_end
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.service import KindAvailability, availability
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
JOURNAL_ROWS = 50
KIND_LABELS = {
    Kind.inference: "Max Tokens · inference",
    Kind.training: "Max Train Tokens · training",
}


@dataclass(frozen=True)
class Forecast:
    """When `remaining` reaches 0 at the pace of this period so far."""

    kind: Kind
    pace_per_day: int
    runs_out_on: datetime | None
    """None: not this period (or never, for a prepaid organization)."""


def forecast(
    kind: Kind, used: int, remaining: int, start: datetime, end: datetime | None, now: datetime
) -> Forecast:
    """Used so far / time elapsed in the period → the moment remaining hits 0."""
    elapsed = int((now - start).total_seconds())
    if used <= 0 or elapsed <= 0:
        return Forecast(kind, 0, None)
    pace_per_day = used * 86_400 // elapsed
    # Integer arithmetic: remaining / (used / elapsed) seconds from now.
    runs_out = now + timedelta(seconds=max(0, remaining) * elapsed // used)
    if end is not None and runs_out >= end:
        return Forecast(kind, pace_per_day, None)
    return Forecast(kind, pace_per_day, runs_out)


def _buckets(rows: Any, zone: ZoneInfo, keys: list[datetime], month: bool) -> dict[Kind, list[int]]:
    """Usage per day or per month in the organization's zone, the same bucketing as the
    API's usage history (GET /v1/users/{id}/usage)."""
    sums: dict[datetime, dict[str, int]] = defaultdict(lambda: {"inference": 0, "training": 0})
    for moment, kind, used in rows:
        local = moment.astimezone(zone)
        key = datetime(local.year, local.month, 1 if month else local.day, tzinfo=zone)
        sums[key][kind] += used
    return {kind: [sums[k][kind.value] if k in sums else 0 for k in keys] for kind in Kind}


async def user_view(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> dict[str, Any]:
    """Everything the user page and the member's own page show."""
    zone = ZoneInfo(org.time_zone)
    start = current_period(org, now)
    end = period_end(org.period, org.time_zone, now)
    kinds: dict[Kind, KindAvailability] = await availability(session, org, user, now)

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
    rows = await usage_repository.usage_by_bucket(session, user.id, min(day_since, month_since))
    per_day = _buckets([r for r in rows if r[0] >= day_since], zone, days, False)
    per_month = _buckets(rows, zone, months, True)
    daily = bar_chart(
        "chart-days",
        f"Usage per day of {user.email}, this period",
        [d.strftime("%d %b") for d in days],
        [
            Series("inference", per_day[Kind.inference], "inference"),
            Series("training", per_day[Kind.training], "training"),
        ],
        x_label=f"day ({org.time_zone})",
    )
    monthly = bar_chart(
        "chart-months",
        f"Usage per month of {user.email}, past year",
        [m.strftime("%b %Y") for m in months],
        [
            Series("inference", per_month[Kind.inference], "inference"),
            Series("training", per_month[Kind.training], "training"),
        ],
        x_label=f"month ({org.time_zone})",
        tick_labels=[
            m.strftime("%b %Y" if m.month == 1 or m == months[0] else "%b") for m in months
        ],
    )
    forecasts = {
        kind: forecast(kind, k.used, k.remaining, start, end, now)
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


@router.get("/orgs/{org_id}/users/{user_id}")
async def user_page(
    request: Request, org_id: uuid.UUID, user_id: uuid.UUID, viewer: ViewerDep
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db, now = get_db(request), get_clock(request).now()
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
