"""The platform operator's page: every organization with its balances, creating an
organization, and recording purchases."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import ALLOWANCE_LABEL, DEFAULT_MINIMUM, Kind, Period, fmt

router = APIRouter(include_in_schema=False)


def _require_operator(viewer: Viewer) -> None:
    if not viewer.is_operator:
        raise NotFound("Page not found.")


async def _operator_page(
    request: Request, viewer: Viewer, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    async def load(session: AsyncSession) -> dict[str, Any]:
        return {"orgs": await organization_repository.list_all(session)}

    return render(
        request,
        "operator.html",
        viewer,
        status_code=status_code,
        kinds=list(Kind),
        **{**await db_of(request).read(load), **context},
    )


@router.get("/operator")
async def operator_page(
    request: Request,
    viewer: ViewerDep,
    created: Annotated[str, Query(max_length=200)] = "",
    purchase: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    _require_operator(viewer)
    notice = None
    if created:
        notice = f"Organization {created} created."
    elif purchase:
        notice = f"Purchase recorded for {purchase}."
    return await _operator_page(request, viewer, notice=notice)


def _amount(text: str, label: str) -> int:
    try:
        return parse_amount(text or "0")
    except ValueError as error:
        raise InvalidRequest(f"{label}: {error}", code="invalid_amount") from error


@router.post("/operator/orgs")
async def create_organization(
    request: Request,
    viewer: WriterDep,
    name: Annotated[Text, Form(max_length=200)] = "",
    time_zone: Annotated[str, Form(max_length=64)] = "UTC",
    period: Annotated[Literal["monthly", "none"], Form()] = "monthly",
    min_inference: Annotated[str, Form(max_length=64)] = fmt(DEFAULT_MINIMUM[Kind.inference]),
    min_training: Annotated[str, Form(max_length=64)] = fmt(DEFAULT_MINIMUM[Kind.training]),
) -> Response:
    _require_operator(viewer)

    async def work(session: AsyncSession, act: Act) -> str:
        if not name.strip():
            raise InvalidRequest("The organization needs a name.")
        org = await organization_service.create(
            session,
            act,
            name=name.strip(),
            time_zone=time_zone.strip() or "UTC",
            period=Period(period),
            min_inference=_amount(min_inference, f"Minimum {ALLOWANCE_LABEL[Kind.inference]}"),
            min_training=_amount(min_training, f"Minimum {ALLOWANCE_LABEL[Kind.training]}"),
        )
        return org.name

    return await _write(request, viewer, work, "create", done="created")


async def _write(
    request: Request,
    viewer: Viewer,
    work: Callable[[AsyncSession, Act], Awaitable[str]],
    form: str,
    *,
    done: str,
) -> Response:
    """One write of a form of the page, which names an organization: refused, the page again
    with the message at the form; done, back to the page, which says so (`done`)."""
    actor, clock = viewer.principal.actor, clock_of(request)
    try:
        org_name = await db_of(request).write(lambda s: work(s, Act(actor, clock.now())))
    except TokenAdminError as error:
        refused = {f"{form}_error": error.message}
        return await _operator_page(request, viewer, status_code=error.status_code, **refused)
    return RedirectResponse(f"/operator?{urlencode({done: org_name})}", status_code=303)


FIRST_DAY, LAST_DAY = date(1, 12, 31), date(9998, 12, 30)
"""The days a purchase may be valid through: its expiry, the next midnight, then falls in
the years 2 to 9998, as the API's expiries do (organization.schemas.Expiry)."""


def _expiry(valid_through: str, zone: ZoneInfo) -> datetime:
    """Valid through that day in the organization's zone: it expires at the next midnight."""
    try:
        last_day = date.fromisoformat(valid_through)
    except ValueError as error:
        raise InvalidRequest("The expiry is not a date.", code="invalid_expiry") from error
    if not FIRST_DAY <= last_day <= LAST_DAY:
        raise InvalidRequest(
            f"The last valid day must fall between {FIRST_DAY} and {LAST_DAY}.",
            code="invalid_expiry",
        )
    return datetime.combine(last_day + timedelta(days=1), datetime.min.time(), zone)


@router.post("/operator/purchases")
async def record_purchase(
    request: Request,
    viewer: WriterDep,
    org_id: Annotated[uuid.UUID, Form()],
    inference_amount: Annotated[str, Form(max_length=64)] = "",
    training_amount: Annotated[str, Form(max_length=64)] = "",
    valid_through: Annotated[str, Form(max_length=10)] = "",
    payer: Annotated[Text, Form(max_length=200)] = "",
    note: Annotated[Text, Form(max_length=2000)] = "",
) -> Response:
    _require_operator(viewer)

    async def work(session: AsyncSession, act: Act) -> str:
        org = await organization_service.lock_for_change(session, act, org_id)
        expires_at = None
        if valid_through:
            expires_at = _expiry(valid_through, ZoneInfo(org.time_zone))
        await organization_service.record_purchase(
            session,
            act,
            org,
            inference_amount=_amount(inference_amount, "Inference tokens"),
            training_amount=_amount(training_amount, "Training tokens"),
            purchased_on=None,
            expires_at=expires_at,
            payer=payer.strip(),
            note=note.strip(),
        )
        return org.name

    return await _write(request, viewer, work, "purchase", done="purchase")
