"""Finding a user by what a person types: an id or an email."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.errors import NotFound
from tokenadmin.models import User
from tokenadmin.user import repository


async def find_by_ref(
    session: AsyncSession, org_id: uuid.UUID | None, ref: str, *, where: str = "this organization"
) -> User:
    """The user of the organization (None: of any) named by `ref`, an id or an email in any
    case; anyone else is refused (404 user_not_found), saying where they were looked for."""
    found = (await repository.find_by_refs(session, org_id, [ref])).get(ref)
    if found is None:
        place = f" in {where}" if where else ""
        raise NotFound(f"No user '{ref}'{place}.", code="user_not_found")
    return found
