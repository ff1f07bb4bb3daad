"""One user's page: allowances (which an admin changes in place), usage of the last 30 days
and 12 months as charts and per model, open reservations, their journal and a forecast of
when they run out. Members see the same on /me, without the change.

The figures come from report/service.py, as the API's and the CLI's do; this only draws."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.amounts import parse_amount
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.charts import (
    Series,
    bar_chart,
    day_labels,
    figures_table,
    month_labels,
)
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org, up_to_date
from tokenadmin.deps import idempotent_write
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.report import service as report_service
from tokenadmin.report.endpoints import csv_answer
from tokenadmin.report.service import RecentUsage
from tokenadmin.tokens import ALLOWANCE_FIELD, ALLOWANCE_LABEL, Kind
from tokenadmin.usage import repository as usage_repository
from tokenadmin.usage.service import availability
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
JOURNAL_ROWS = 50
NOTICES = {
    "allowances-saved": "The allowances are saved.",
    "allowances-unchanged": "Nothing to save: the allowances are as they were.",
}
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


def _charts(org: Organization, user: User, recent: RecentUsage) -> dict[str, Markup]:
    """The charts per day (last 30 days) and per month (last 12), with their figures."""
    zone = f"({org.time_zone})"
    days, months = recent.daily.buckets, recent.monthly.buckets
    day_names = [f"{d.day} {d:%b %Y}" for d in days]
    month_names = [f"{m:%B %Y}" for m in months]
    daily = [Series(kind.value, recent.daily.series(kind), kind.value) for kind in Kind]
    monthly = [Series(kind.value, recent.monthly.series(kind), kind.value) for kind in Kind]
    return {
        "daily_chart": bar_chart(
            "chart-days",
            f"Usage per day of {user.email}, last {report_service.RECENT_DAYS} days",
            day_names,
            daily,
            day_labels(days),
            x_label=f"day {zone}",
        ),
        "daily_table": figures_table("figures-days", "Usage per day", day_names, daily),
        "monthly_chart": bar_chart(
            "chart-months",
            f"Usage per month of {user.email}, past year",
            month_names,
            monthly,
            month_labels(months),
            x_label=f"month {zone}",
        ),
        "monthly_table": figures_table("figures-months", "Usage per month", month_names, monthly),
    }


async def user_view(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> dict[str, Any]:
    """Everything the user page and the member's own page show."""
    recent = await report_service.recent_usage(session, org, now, user)
    forecast = await report_service.user_forecast(session, org, user, now)
    return {
        "org": org,
        "user": user,
        "kinds": await availability(session, org, user, now),
        "kind_labels": KIND_LABELS,
        **_charts(org, user, recent),
        "models": recent.models,
        "recent_from": recent.daily.first,
        "recent_until": recent.daily.last,
        "forecasts": forecast.kinds if user.active else {},
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
    first, last = report_service.recent_range(org, now, bucket)
    report = await report_service.usage_report(
        session, org, now, granularity=bucket, first=first, last=last, user=user
    )
    return csv_answer(report)


async def user_page_response(
    request: Request,
    viewer: Viewer,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """The page itself; a refused allowance change renders it again with its refusals."""

    async def load(
        session: AsyncSession, org: Organization, user: User, now: datetime
    ) -> dict[str, Any]:
        view = await user_view(session, org, user, now)
        view["reservations"] = await usage_repository.open_reservations_of(session, user.id)
        view["entries"] = await journal_repository.list_entries(
            session, JournalFilter(org_id=org.id, user_id=user.id, limit=JOURNAL_ROWS)
        )
        return view

    data = await for_user(request, org_id, user_id, load)
    return render(
        request,
        "user_page.html",
        viewer,
        status_code=status_code,
        may_edit=viewer.principal.may(org_id, "admin"),
        allowance_fields=ALLOWANCE_FIELD,
        **data,
        **context,
    )


@router.get("/orgs/{org_id}/users/{user_id}")
async def user_page(
    request: Request,
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=40)] = "",
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    return await user_page_response(request, viewer, org_id, user_id, notice=NOTICES.get(notice))


@dataclass
class _Row:
    """The page's change as a row of `allowance.service.change` (`RowLike`)."""

    user: str
    max_tokens: int | None
    max_train_tokens: int | None
    expected_version: int | None


def _form_number(form: FormData, name: str) -> int | None:
    """A whole number the page itself put in the form (a version, a value shown); None when
    left out. Anything else was not sent by the page."""
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 16:
        raise InvalidRequest("The form is out of date; reload the page and try again.")
    return int(value)


def _refusals(error: TokenAdminError) -> dict[str, str]:
    """Each refusal beside the field it is about ("max_tokens"), the rest under "form"."""
    found: dict[str, str] = {}
    rows = error.details.get("refused") if isinstance(error.details, dict) else None
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict):
            continue
        kind = str(row.get("kind"))
        where = ALLOWANCE_FIELD[Kind(kind)] if kind in {k.value for k in Kind} else "form"
        message = str(row.get("message", error.message))
        found[where] = f"{found[where]} {message}" if where in found else message
    return found or {"form": error.message}


@router.post("/orgs/{org_id}/users/{user_id}/allowances")
async def change_allowances(
    request: Request, org_id: uuid.UUID, user_id: uuid.UUID, viewer: WriterDep
) -> Response:
    """Change one user's Max Tokens and Max Train Tokens from their page, as one change.

    Only the fields the admin changed are sent (against the values the page showed), with
    the version the page showed, so a change made meanwhile is not silently undone."""
    require_org(viewer, org_id, "admin")
    form = await request.form()
    typed = {name: str(form.get(name) or "").strip() for name in ALLOWANCE_FIELD.values()}
    errors: dict[str, str] = {}
    amounts: dict[str, int | None] = {name: None for name in ALLOWANCE_FIELD.values()}
    version: int | None = None
    shown: dict[str, int | None] = {}
    try:
        version = _form_number(form, "version")
        shown = {name: _form_number(form, f"{name}_was") for name in ALLOWANCE_FIELD.values()}
    except InvalidRequest as error:
        errors["form"] = error.message
    for kind, name in ALLOWANCE_FIELD.items():
        try:
            value = parse_amount(typed[name])
        except ValueError as error:
            errors[name] = f"{ALLOWANCE_LABEL[kind]}: {error}"
            continue
        if value != shown.get(name):
            amounts[name] = value
    changed = any(value is not None for value in amounts.values())
    status_code = 422
    if not errors and changed:
        row = _Row(str(user_id), amounts["max_tokens"], amounts["max_train_tokens"], version)

        async def work(session: AsyncSession, act: Act) -> None:
            user = await user_repository.get(session, user_id)
            if user is None or user.org_id != org_id:
                raise NotFound("User not found.")
            await allowance_service.change(session, act, org_id, [row], one_user=True)

        try:
            await idempotent_write(request, viewer.principal, work)
        except TokenAdminError as error:
            errors, status_code = _refusals(error), error.status_code
    if errors:
        return await user_page_response(
            request,
            viewer,
            org_id,
            user_id,
            status_code=status_code,
            allowance_errors=errors,
            allowance_typed=typed,
        )
    notice = "allowances-saved" if changed else "allowances-unchanged"
    return RedirectResponse(
        f"/orgs/{org_id}/users/{user_id}?notice={notice}#allowance-edit", status_code=303
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
