"""A person's own page, "My tokens" (an admin's too): their allowances, usage and charts,
what remains, and the form to ask their administrators for more tokens."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.notifications import member_events
from tokenadmin.dashboard.requests import member_requests
from tokenadmin.dashboard.user_page import for_user, usage_csv, user_view
from tokenadmin.dashboard.web import ViewerDep, render
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization, User
from tokenadmin.policy import service as policy_service

router = APIRouter(include_in_schema=False)
NOTICES = {
    "requested": "Your request is sent: your administrators see it on their page.",
    "approved": "Your request is approved: your allowance is raised already.",
    "withdrawn": "Your request is withdrawn.",
    "key-revoked": "The API key is revoked; it no longer works.",
}
T = TypeVar("T")


async def _as_me(
    request: Request,
    viewer: Viewer,
    work: Callable[[AsyncSession, Organization, User, datetime], Awaitable[T]],
) -> T:
    """Run `work` on the signed-in person's own organization and user."""
    if viewer.user_id is None or viewer.org_id is None:
        raise NotFound("Page not found.")
    return await for_user(request, viewer.org_id, viewer.user_id, work)


async def my_page_response(
    request: Request, viewer: Viewer, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """The page itself; a refused request for tokens renders it again with its error."""

    async def work(
        session: AsyncSession, org: Organization, user: User, now: datetime
    ) -> dict[str, Any]:
        view = await user_view(session, org, user, now)
        view["my_requests"] = await member_requests(session, user.id)
        view["my_keys"] = await api_key_service.list_personal(session, user.id)
        view["my_events"] = await member_events(session, org.id, user.id)
        active, _ = await policy_service.boosts(session, org, user_id=user.id, state="active")
        view["my_boosts"] = [boost for boost, _ in active]
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
    """My charts' figures as CSV: date, inference, training."""
    return await _as_me(request, viewer, partial(usage_csv, bucket=bucket))
