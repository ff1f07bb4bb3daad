"""The event routes: thin callers of events.service.

An organization's events: its administrators and readers (`admin`, `read`) and operators.
A user's events: theirs (a member's own key), or a key acting for the organization's users
(`admin`, `usage`, `read`). Another organization's events do not exist (404).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import DatabaseDep, Limit, Offset, PrincipalDep
from tokenadmin.errors import NotFound
from tokenadmin.events import service
from tokenadmin.events.schemas import EventKindName, EventPage
from tokenadmin.schemas import Moment
from tokenadmin.user import repository as user_repository

org_router = APIRouter(
    prefix="/v1/organizations/{org_id}/events", tags=["events"], dependencies=AUDITED
)
user_router = APIRouter(prefix="/v1/users/{user_id}/events", tags=["events"], dependencies=AUDITED)

ORG_READERS = ("admin", "read")
USER_READERS = ("admin", "usage", "read")

Since = Annotated[
    Moment | None, Query(description="Only events at or after this time (with offset).")
]


@org_router.get("", response_model=EventPage)
async def list_organization_events(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    kind: EventKindName | None = None,
    user_id: uuid.UUID | None = None,
    since: Since = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> EventPage:
    """An organization's events, newest first: of a kind, of a user, since a time."""
    principal.require_any(org_id, ORG_READERS, "Organization")
    query = service.EventQuery(
        org_id=org_id,
        user_id=user_id,
        kind=kind,
        since=since,
        limit=limit,
        offset=offset,
    )
    return await db.read(lambda session: service.search(session, query))


@user_router.get("", response_model=EventPage)
async def list_user_events(
    user_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    kind: EventKindName | None = None,
    since: Since = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> EventPage:
    """A user's events, newest first (a member's own key: theirs)."""

    async def work(session: AsyncSession) -> EventPage:
        user = await user_repository.get(session, user_id)
        if user is None:
            raise NotFound("User not found.")
        if principal.user_id != user.id:
            principal.require_any(user.org_id, USER_READERS, "User")
        query = service.EventQuery(
            org_id=user.org_id,
            user_id=user.id,
            kind=kind,
            since=since,
            limit=limit,
            offset=offset,
        )
        return await service.search(session, query)

    return await db.read(work)
