"""Notifications on the dashboard: an organization's events for its administrators, newest
first, filtered by kind (/orgs/{org}/notifications); a member's own on /me. Thin callers of
events.service."""

from __future__ import annotations

import uuid
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.web import ViewerDep, render, require_org, up_to_date
from tokenadmin.events import service
from tokenadmin.events.schemas import EventOut
from tokenadmin.organization import service as organization_service

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
MEMBER_SHOWN = 10
"""A member's newest events shown on /me."""

KIND_WORDS = {
    "allowance.threshold": "Allowance threshold passed",
    "balance.low": "Balance low",
    "organization.over_allocated": "Over-allocated",
    "purchase.expiring": "Purchase expiring",
    "purchase.expired": "Purchase expired",
    "period.began": "New period",
    "token_request.made": "Token request made",
    "token_request.decided": "Token request decided",
    "policy.moved": "Policy moved tokens",
}
"""The kinds of events as an administrator reads them."""


async def member_events(
    session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID
) -> list[EventOut]:
    """A person's newest events, for /me."""
    query = service.EventQuery(org_id=org_id, user_id=user_id, limit=MEMBER_SHOWN)
    return (await service.search(session, query)).events


def alert_settings(thresholds: str | None, below: str) -> dict[str, Any]:
    """The alert settings as typed on the Settings page ("80, 100" and "10"): the policy
    changes they make (a blank low-balance percent leaves it as it is). The policy service
    checks the numbers."""
    changes: dict[str, Any] = {}
    if thresholds is not None:
        changes["alert_thresholds"] = service.parse_thresholds(thresholds)
    if below.strip():
        try:
            changes["alert_balance_below_percent"] = int(below.strip().rstrip("%").strip())
        except ValueError:
            raise ValueError(
                "write the low-balance percent as a whole number, such as 10."
            ) from None
    return changes


@router.get("/orgs/{org_id}/notifications")
async def notifications_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    kind: Annotated[str, Query(max_length=40)] = "",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db, _ = await up_to_date(request, org_id)
    chosen = kind if kind in service.KINDS else ""

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        query = service.EventQuery(
            org_id=org_id, kind=chosen or None, limit=PAGE_SIZE, offset=offset
        )
        return {"org": org, "page": await service.search(session, query)}

    data = await db.read(load)
    page = data["page"]
    params = {"kind": chosen} if chosen else {}
    older = offset + PAGE_SIZE
    return render(
        request,
        "notifications.html",
        viewer,
        **data,
        kind=chosen,
        kind_words=KIND_WORDS,
        tz=ZoneInfo(data["org"].time_zone),
        older_link="?" + urlencode({**params, "offset": older}) if older < page.total else None,
        newest_link=("?" + urlencode(params)) if offset else None,
    )
