from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.audit import log_denials
from tokenadmin.deps import DatabaseDep, PrincipalDep
from tokenadmin.journal import repository
from tokenadmin.journal import service as journal_service
from tokenadmin.journal.schemas import JournalEntryOut, JournalPage
from tokenadmin.journal.service import JournalFilter
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Moment, Text
from tokenadmin.tokens import Kind

router = APIRouter(
    prefix="/v1/organizations/{org_id}/journal",
    tags=["journal"],
    dependencies=[Depends(log_denials)],
)

USER = "Entries of this user: an id or an email (one not in the organization: 404)."
SINCE = "Entries from this time on: ISO 8601 with an offset, such as 2026-03-01T00:00:00Z."
UNTIL = "Entries before this time: ISO 8601 with an offset, such as 2026-04-01T00:00:00Z."


@router.get("", response_model=JournalPage)
async def list_journal(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    user: Annotated[Text | None, Query(min_length=1, max_length=320, description=USER)] = None,
    kind: Kind | None = None,
    action: Annotated[Text | None, Query(max_length=32)] = None,
    actor: Annotated[Text | None, Query(max_length=200)] = None,
    since: Annotated[Moment | None, Query(description=SINCE)] = None,
    until: Annotated[Moment | None, Query(description=UNTIL)] = None,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JournalPage:
    """Read the journal, newest first; filter by user, kind, action, actor and time."""
    principal.require(org_id, "read")
    query = JournalFilter(
        org_id=org_id,
        kind=kind,
        action=action,
        actor=actor,
        since=since,
        until=until,
        before_id=before_id,
        limit=limit,
    )

    async def work(session: AsyncSession) -> JournalPage:
        await organization_service.get(session, org_id)
        if user is not None:
            query.user_id = await journal_service.user_id_of(session, org_id, user)
        entries = await repository.list_entries(session, query)
        next_id = entries[-1].id if len(entries) == limit else None
        return JournalPage(entries=[JournalEntryOut.of(e) for e in entries], next_before_id=next_id)

    return await db.read(work)
