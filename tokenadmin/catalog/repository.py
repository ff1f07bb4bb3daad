from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import LlmModel


async def rows_for(session: AsyncSession, org_id: uuid.UUID | None) -> Sequence[LlmModel]:
    """The platform's rows, and the organization's when one is named, by name."""
    scope: ColumnElement[bool] = LlmModel.org_id.is_(None)
    if org_id is not None:
        scope = or_(scope, LlmModel.org_id == org_id)
    statement = select(LlmModel).where(scope).order_by(LlmModel.name, LlmModel.org_id)
    return (await session.scalars(statement)).all()


async def named(
    session: AsyncSession, org_id: uuid.UUID | None, name: str, *, lock: bool = False
) -> LlmModel | None:
    """The row of `name` of exactly this scope (the platform when `org_id` is None)."""
    owner = LlmModel.org_id.is_(None) if org_id is None else LlmModel.org_id == org_id
    statement = select(LlmModel).where(owner, LlmModel.name == name)
    if lock:
        statement = statement.with_for_update()
    return await session.scalar(statement)
