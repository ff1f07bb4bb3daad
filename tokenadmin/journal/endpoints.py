from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import DatabaseDep, PrincipalDep
from tokenadmin.journal import repository
from tokenadmin.journal.schemas import JournalEntryOut, JournalPage, JournalQuery
from tokenadmin.journal.service import JournalFilter
from tokenadmin.organization import service as organization_service
from tokenadmin.user.service import find_by_ref

PATH = "/v1/organizations/{org_id}/journal"
router = APIRouter(prefix=PATH, tags=["journal"], dependencies=AUDITED)


@router.get("", response_model=JournalPage)
async def list_journal(
    org_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    filters: Annotated[JournalQuery, Query()],
) -> JournalPage:
    """Read the journal, newest first; filter by user, kind, action, actor and time."""
    principal.require(org_id, "read")
    query = JournalFilter(org_id=org_id, **filters.model_dump(exclude={"user"}))
    user, limit = filters.user, filters.limit

    async def work(session: AsyncSession) -> JournalPage:
        await organization_service.get(session, org_id)
        if user is not None:
            query.user_id = (await find_by_ref(session, org_id, user)).id
        entries = await repository.list_entries(session, query)
        next_id = entries[-1].id if len(entries) == limit else None
        return JournalPage(entries=[JournalEntryOut.of(e) for e in entries], next_before_id=next_id)

    return await db.read(work)
