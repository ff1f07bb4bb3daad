"""The organization admin's home: the token balance above the user table."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.web import ViewerDep, render, require_org
from tokenadmin.deps import get_clock, get_db
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.user import repository as user_repository
from tokenadmin.user.schemas import SortField, UserOut

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50


@router.get("/orgs/{org_id}")
async def org_home(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    status: Literal["active", "deactivated", ""] = "",
    role: Literal["admin", "member", ""] = "",
    near: Literal["", "80", "95"] = "",
    sort: SortField = "name",
    order: Literal["asc", "desc"] = "asc",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db, now = get_db(request), get_clock(request).now()
    await organization_service.up_to_date(db, org_id, now)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now)
        start = current_period(org, now)
        query = user_repository.UserQuery(
            org_id=org_id,
            period_start=start,
            search=q or None,
            status=status or None,
            role=role or None,
            near_limit=int(near) / 100 if near else None,
            sort=sort,
            descending=order == "desc",
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
        users, total = await user_repository.search(session, query)
        return {
            "org": org,
            "balance": balance,
            "users": [UserOut.of(u, start) for u in users],
            "total": total,
        }

    data = await db.read(load)
    filters = {"q": q or "", "status": status, "role": role, "near": near}
    total: int = data["total"]
    pages = max(1, -(-total // PAGE_SIZE))

    def link(**changes: object) -> str:
        params = {**filters, "sort": sort, "order": order, "page": page, **changes}
        return "?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

    return render(
        request,
        "org_home.html",
        viewer,
        **data,
        filters=filters,
        sort=sort,
        order=order,
        page=page,
        pages=pages,
        page_size=PAGE_SIZE,
        link=link,
        tz=ZoneInfo(data["org"].time_zone),
    )
