"""A member's own page: their allowances, this period's usage, what remains, their chart."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.user_page import user_view
from tokenadmin.dashboard.web import ViewerDep, render
from tokenadmin.deps import get_clock, get_db
from tokenadmin.errors import NotFound
from tokenadmin.organization import service as organization_service
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)


@router.get("/me")
async def my_page(request: Request, viewer: ViewerDep) -> Response:
    if viewer.user_id is None or viewer.org_id is None:
        return RedirectResponse(viewer.home(), status_code=303)  # operators have no allowance
    user_id, org_id = viewer.user_id, viewer.org_id
    db, now = get_db(request), get_clock(request).now()
    await organization_service.up_to_date(db, org_id, now)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        return await user_view(session, org, user, now)

    return render(request, "member_home.html", viewer, **await db.read(load))
