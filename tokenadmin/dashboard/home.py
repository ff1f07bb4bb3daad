"""The organization admin's home: the token balance above the user table."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.requests import pending_requests
from tokenadmin.dashboard.web import ViewerDep, render, require_org, up_to_date
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.report import service as report_service
from tokenadmin.schemas import Text
from tokenadmin.user import repository as user_repository
from tokenadmin.user.schemas import SortField, UserOut

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
USAGE_MAX_AGE = 5.0
"""Seconds the balance's "used this period" may be old on this page: summing it reads
every user, which at 100,000 users costs more than the rest of the page."""
SORT_FIELDS = set(SortField.__args__)  # type: ignore[attr-defined]

NOTICES = {
    "added": "User added.",
    "deactivated": "Deactivated {n}; their unused allowances returned to the balance.",
    "reactivated": "Reactivated {n} with at least the minimum allowance.",
    "admin": "{n} now admin.",
    "member": "{n} now member.",
    "unchanged": "Nothing to change: the selected users already were that way.",
    "approved": "Request approved: the allowance is raised.",
    "denied": "Request denied; the member sees your note.",
}
"""What a write redirects back to say; fixed texts, so a link cannot put words on the page."""


@dataclass
class TableView:
    """Which part of the user table is shown: search, filters, sort and page."""

    q: str = ""
    status: str = ""
    role: str = ""
    near: str = ""
    sort: str = "name"
    order: str = "asc"
    page: int = 1

    @classmethod
    def from_query(cls, query: str) -> TableView:
        """The view a write came from (its `back` field), keeping only values that make sense."""
        values = {k: v[-1] for k, v in parse_qs(query.lstrip("?")).items()}
        view = cls()

        def one_of(name: str, *allowed: str) -> str:
            return values[name] if values.get(name) in allowed else ""

        view.q = values.get("q", "")[:200]
        view.status = one_of("status", "active", "deactivated")
        view.role = one_of("role", "admin", "member")
        view.near = one_of("near", "80", "95")
        view.sort = values["sort"] if values.get("sort") in SORT_FIELDS else "name"
        view.order = "desc" if values.get("order") == "desc" else "asc"
        page = values.get("page", "1")
        view.page = min(100_000, max(1, int(page))) if page.isdigit() else 1
        return view

    def query(self, **changes: object) -> str:
        params = {**asdict(self), **changes}
        defaults = asdict(TableView())
        kept = {k: v for k, v in params.items() if v not in ("", None) and defaults.get(k) != v}
        return "?" + urlencode(kept) if kept else ""


def notice_text(notice: str, count: int) -> str | None:
    text = NOTICES.get(notice)
    if text is None:
        return None
    who = f"{count:,} user" + ("" if count == 1 else "s")
    return text.format(n=who)


@router.get("/orgs/{org_id}")
async def org_home(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    q: Annotated[Text | None, Query(max_length=200)] = None,
    status: Literal["active", "deactivated", ""] = "",
    role: Literal["admin", "member", ""] = "",
    near: Literal["", "80", "95"] = "",
    sort: SortField = "name",
    order: Literal["asc", "desc"] = "asc",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    notice: Annotated[str, Query(max_length=20)] = "",
    n: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> HTMLResponse:
    view = TableView(q or "", status, role, near, sort, order, page)
    return await home_page(request, viewer, org_id, view, notice=notice_text(notice, n))


async def home_page(
    request: Request,
    viewer: Viewer,
    org_id: uuid.UUID,
    view: TableView,
    *,
    status_code: int = 200,
    notice: str | None = None,
    error: str | None = None,
    new_user: dict[str, str] | None = None,
) -> HTMLResponse:
    """The page itself; writes that are refused render it again with their error."""
    require_org(viewer, org_id, "read")
    db, now = await up_to_date(request, org_id)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now, usage_max_age=USAGE_MAX_AGE)
        start = current_period(org, now)
        query = user_repository.UserQuery(
            org_id=org_id,
            period_start=start,
            search=view.q or None,
            status=view.status or None,
            role=view.role or None,
            near_limit=int(view.near) / 100 if view.near else None,
            sort=view.sort,
            descending=view.order == "desc",
            limit=PAGE_SIZE,
            offset=(view.page - 1) * PAGE_SIZE,
        )
        users, total = await user_repository.search(session, query)
        forecast = await report_service.org_forecast(
            session, org, now, balance=balance, count_days=False
        )
        return {
            "org": org,
            "balance": balance,
            "forecasts": forecast.kinds,
            "requests": await pending_requests(session, org_id),
            "users": [UserOut.of(u, start) for u in users],
            "total": total,
        }

    data = await db.read(load)
    total: int = data["total"]
    pages = max(1, -(-total // PAGE_SIZE))

    def link(**changes: object) -> str:
        return view.query(**changes) or "?"

    return render(
        request,
        "org_home.html",
        viewer,
        status_code=status_code,
        **data,
        filters={"q": view.q, "status": view.status, "role": view.role, "near": view.near},
        sort=view.sort,
        order=view.order,
        page=view.page,
        pages=pages,
        page_size=PAGE_SIZE,
        link=link,
        back=view.query(),
        tz=ZoneInfo(data["org"].time_zone),
        can_write=viewer.principal.may(org_id, "admin"),
        notice=notice,
        error=error,
        new_user=new_user,
    )
