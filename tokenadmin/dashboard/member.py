"""A member's own page: their allowances, this period's usage, what remains, their chart,
and the form to ask their administrators for more tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.requests import member_requests
from tokenadmin.dashboard.user_page import Usage, usage_csv, usage_of, user_view
from tokenadmin.dashboard.web import ViewerDep, render
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
NOTICES = {
    "requested": "Your request is sent: your administrators see it on their page.",
    "withdrawn": "Your request is withdrawn.",
}
T = TypeVar("T")


async def _as_me(
    request: Request,
    viewer: Viewer,
    work: Callable[[AsyncSession, Organization, User, datetime], Awaitable[T]],
) -> T:
    """Run `work` on the signed-in person's own organization and user."""
    user_id, org_id = viewer.user_id, viewer.org_id
    if user_id is None or org_id is None:
        raise NotFound("Page not found.")
    db, now = db_of(request), clock_of(request).now()
    await organization_service.up_to_date(db, org_id, now)

    async def load(session: AsyncSession) -> T:
        org = await organization_service.get(session, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        return await work(session, org, user, now)

    return await db.read(load)


async def my_page_response(
    request: Request, viewer: Viewer, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """The page itself; a refused request for tokens renders it again with its error."""

    async def work(
        session: AsyncSession, org: Organization, user: User, now: datetime
    ) -> dict[str, Any]:
        view = await user_view(session, org, user, now)
        view["my_requests"] = await member_requests(session, user.id)
        return view

    data = await _as_me(request, viewer, work)
    return render(request, "member_home.html", viewer, status_code=status_code, **data, **context)


@router.get("/me")
async def my_page(
    request: Request,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> Response:
    if viewer.user_id is None or viewer.org_id is None:
        return RedirectResponse(viewer.home(), status_code=303)  # operators have no allowance
    return await my_page_response(request, viewer, notice=NOTICES.get(notice))


@router.get("/me/usage-per-{bucket}.csv")
async def my_usage_csv(
    request: Request, bucket: Literal["day", "month"], viewer: ViewerDep
) -> Response:
    """My usage charts' figures as CSV: date, inference, training."""

    async def work(
        session: AsyncSession, org: Organization, user: User, now: datetime
    ) -> tuple[Usage, str]:
        return await usage_of(session, org, user, now), user.email

    usage, email = await _as_me(request, viewer, work)
    return usage_csv(usage, bucket, email)
