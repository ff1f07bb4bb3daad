"""Token requests on the dashboard: a member asks and withdraws on /me; the admin's home
lists the pending ones to approve (the amount editable) or deny (with a note).

Thin callers of token_request.service, one transaction per form.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.web import WriterDep, require_org
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.token_request import service
from tokenadmin.token_request.schemas import TokenRequestOut
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
SHOWN = 20
"""Requests shown on a page: the newest pending ones on the home, a member's latest on /me."""


async def pending_requests(session: AsyncSession, org_id: uuid.UUID) -> list[TokenRequestOut]:
    """The organization's pending requests, newest first, for its home."""
    query = service.RequestQuery(org_id=org_id, state="pending", limit=SHOWN)
    return (await service.search(session, query)).requests


async def member_requests(session: AsyncSession, user_id: uuid.UUID) -> list[TokenRequestOut]:
    """A member's latest requests in every state, for /me."""
    query = service.RequestQuery(user_id=user_id, limit=SHOWN)
    return (await service.search(session, query)).requests


def _me(viewer: Viewer) -> tuple[uuid.UUID, uuid.UUID]:
    if viewer.user_id is None or viewer.org_id is None:
        raise NotFound("Page not found.")  # operators have no allowance to ask for
    return viewer.user_id, viewer.org_id


def _act(request: Request, viewer: Viewer) -> Act:
    return Act(viewer.principal.actor, clock_of(request).now())


async def _write(
    request: Request,
    work: Callable[[AsyncSession], Awaitable[None]],
    refused: Callable[[TokenAdminError], Awaitable[Response]],
    done: str | Callable[[], str],
    *,
    missing_on_page: bool = False,
) -> Response:
    """One form's write: saved, a redirect to `done` (or to where `done()` says once saved);
    refused, the page again through `refused`. Something missing (a request, an
    organization) is the 404 page unless `missing_on_page`."""
    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        if isinstance(error, NotFound) and not missing_on_page:
            raise
        return await refused(error)
    return RedirectResponse(done if isinstance(done, str) else done(), status_code=303)


@router.post("/me/requests")
async def request_tokens(
    request: Request,
    viewer: WriterDep,
    kind: Annotated[Kind, Form()],
    amount: Annotated[str, Form(max_length=64)],
    reason: Annotated[Text, Form(max_length=500)] = "",
) -> Response:
    """Ask the organization's administrators for more tokens of one kind."""
    from tokenadmin.dashboard.member import my_page_response  # member imports this module

    user_id, org_id = _me(viewer)
    states: list[str] = []  # the request's state once asked (a retried write asks again)

    async def work(session: AsyncSession) -> None:
        del states[:]
        tokens = _amount(amount, "Tokens")
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id:
            raise NotFound("User not found.")
        asked = await service.ask(session, act, org, user, kind, tokens, reason)
        states.append(asked.state)

    def refused(error: TokenAdminError) -> Awaitable[Response]:
        return my_page_response(
            request,
            viewer,
            status_code=error.status_code,
            request_error=error.message,
            asked=(kind, amount, reason),
        )

    def done() -> str:
        # Within the organization's auto-approval rule, the request is approved at once.
        return "/me?notice=" + ("approved" if states == ["approved"] else "requested")

    return await _write(request, work, refused, done, missing_on_page=True)


@router.post("/me/requests/{request_id}/withdraw")
async def withdraw_request(request: Request, request_id: uuid.UUID, viewer: WriterDep) -> Response:
    """Take back one of my pending requests."""
    from tokenadmin.dashboard.member import my_page_response

    user_id, _ = _me(viewer)

    async def work(session: AsyncSession) -> None:
        act = _act(request, viewer)
        org = await service.lock_org_of(session, act, request_id)
        await service.withdraw(session, act, org, request_id, user_id=user_id)

    def refused(error: TokenAdminError) -> Awaitable[Response]:
        return my_page_response(
            request, viewer, status_code=error.status_code, request_error=error.message
        )

    return await _write(request, work, refused, "/me?notice=withdrawn")


def _amount(text: str, label: str) -> int:
    try:
        return parse_amount(text, positive=True)
    except ValueError as error:
        raise InvalidRequest(f"{label}: {error}", code="invalid_amount") from error


async def _decide(
    request: Request, viewer: Viewer, org_id: uuid.UUID, decide: service.Decision, notice: str
) -> Response:
    """Run a decision on a request of this organization; refused, the home says why."""
    from tokenadmin.dashboard.home import TableView, home_page  # home imports this module

    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> None:
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        await decide(session, act, org)

    def refused(error: TokenAdminError) -> Awaitable[Response]:
        view = TableView()
        return home_page(
            request, viewer, org_id, view, status_code=error.status_code, error=error.message
        )

    return await _write(request, work, refused, f"/orgs/{org_id}?notice={notice}#requests")


@router.post("/orgs/{org_id}/token-requests/{request_id}/approve")
async def approve_request(
    request: Request,
    org_id: uuid.UUID,
    request_id: uuid.UUID,
    viewer: WriterDep,
    amount: Annotated[str, Form(max_length=64)],
    note: Annotated[Text, Form(max_length=500)] = "",
) -> Response:
    """Grant a request: the user's allowance rises by the amount (the page fills in the
    amount asked)."""

    async def decide(session: AsyncSession, act: Act, org: Organization) -> TokenRequestOut:
        granted = _amount(amount, "Tokens to grant")
        return await service.approve(session, act, org, request_id, amount=granted, note=note)

    return await _decide(request, viewer, org_id, decide, "approved")


@router.post("/orgs/{org_id}/token-requests/{request_id}/deny")
async def deny_request(
    request: Request,
    org_id: uuid.UUID,
    request_id: uuid.UUID,
    viewer: WriterDep,
    note: Annotated[Text, Form(max_length=500)] = "",
) -> Response:
    """Refuse a request, with a note the member reads."""

    async def decide(session: AsyncSession, act: Act, org: Organization) -> TokenRequestOut:
        return await service.deny(session, act, org, request_id, note=note)

    return await _decide(request, viewer, org_id, decide, "denied")
