"""Members ask for more tokens; their administrators see the open requests on their home.

A request is an audit entry of the journal ("tokens_requested", no kind and no deltas, so
no balance moves). It stays open until the user's allowance of that kind changes after
it: the administrator grants it by editing the user table as usual, and nothing else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.dashboard.web import WriterDep
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound, TokenAdminError
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal import service as journal_service
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
ACTION = "tokens_requested"
SHOWN = 20
LOOK_BACK = timedelta(days=90)
"""Requests older than this are no longer shown: the journal has no index on its action,
so the search for requests reads the organization's entries of this window."""


@dataclass(frozen=True)
class TokenRequest:
    user_id: uuid.UUID
    name: str
    email: str
    kind: str
    amount: int
    reason: str
    requested_at: datetime


async def open_requests(
    session: AsyncSession,
    org_id: uuid.UUID,
    now: datetime,
    *,
    user_id: uuid.UUID | None = None,
    limit: int = SHOWN,
) -> list[TokenRequest]:
    """The latest requests of the organization (or of one user) made after the user's last
    change of allowance of that kind, newest first."""
    rows = await journal_repository.open_token_requests(
        session, org_id, since=now - LOOK_BACK, user_id=user_id, limit=limit
    )
    found: list[TokenRequest] = []
    for entry, user in rows:
        details = entry.details or {}
        found.append(
            TokenRequest(
                user_id=user.id,
                name=user.name,
                email=user.email,
                kind=str(details.get("kind", "")),
                amount=int(details.get("amount", 0)),
                reason=str(details.get("reason") or ""),
                requested_at=entry.created_at,
            )
        )
    return found


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

    user_id, org_id = viewer.user_id, viewer.org_id
    if user_id is None or org_id is None:
        raise NotFound("Page not found.")  # operators have no allowance to ask for
    try:
        tokens = parse_amount(amount, positive=True)
    except ValueError as error:
        return await my_page_response(
            request, viewer, status_code=422, request_error=str(error), asked=(kind, amount)
        )
    why = reason.strip() or None

    async def work(session: AsyncSession) -> None:
        act = Act(viewer.principal.actor, clock_of(request).now())
        # The entry extends the user's hash chain: metering of the organization waits.
        org = await organization_service.lock_for_change(session, act, org_id)
        user = await user_repository.get(session, user_id)
        if user is None or user.org_id != org.id or not user.active:
            raise NotFound("User not found.")
        journal_service.record(
            session,
            act,
            org,
            "tokens_requested",
            user=user,
            reason=why,
            details={"kind": kind.value, "amount": tokens, "reason": why},
        )

    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        return await my_page_response(
            request,
            viewer,
            status_code=error.status_code,
            request_error=error.message,
            asked=(kind, amount),
        )
    return RedirectResponse("/me?notice=requested", status_code=303)
