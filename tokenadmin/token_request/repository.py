"""Token requests in the database: SQL only, no rules."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import TokenRequest, User


@dataclass(frozen=True)
class RequestQuery:
    org_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    state: str | None = None
    kind: str | None = None
    limit: int = 50
    offset: int = 0


async def get(
    session: AsyncSession, request_id: uuid.UUID, *, lock: bool = False
) -> TokenRequest | None:
    statement = (
        select(TokenRequest)
        .where(TokenRequest.id == request_id)
        .execution_options(populate_existing=True)
    )
    if lock:
        statement = statement.with_for_update()
    found: TokenRequest | None = await session.scalar(statement)
    return found


async def pending_of(session: AsyncSession, user_id: uuid.UUID, kind: str) -> TokenRequest | None:
    statement = select(TokenRequest).where(
        TokenRequest.user_id == user_id,
        TokenRequest.kind == kind,
        TokenRequest.state == "pending",
    )
    found: TokenRequest | None = await session.scalar(statement)
    return found


async def count_decided_by(
    session: AsyncSession, user_id: uuid.UUID, decided_by: str, since: datetime
) -> int:
    """How many of a user's requests `decided_by` approved at or after `since`."""
    statement = select(func.count()).where(
        TokenRequest.user_id == user_id,
        TokenRequest.state == "approved",
        TokenRequest.decided_by == decided_by,
        TokenRequest.decided_at >= since,
    )
    return int(await session.scalar(statement) or 0)


async def search(
    session: AsyncSession, query: RequestQuery
) -> tuple[Sequence[tuple[TokenRequest, User]], int]:
    """Requests with their users, newest first, one page of them and how many there are."""
    conditions = []
    if query.org_id is not None:
        conditions.append(TokenRequest.org_id == query.org_id)
    if query.user_id is not None:
        conditions.append(TokenRequest.user_id == query.user_id)
    if query.state is not None:
        conditions.append(TokenRequest.state == query.state)
    if query.kind is not None:
        conditions.append(TokenRequest.kind == query.kind)
    total = await session.scalar(select(func.count()).select_from(TokenRequest).where(*conditions))
    statement = (
        select(TokenRequest, User)
        .join(User, User.id == TokenRequest.user_id)
        .where(*conditions)
        .order_by(TokenRequest.created_at.desc(), TokenRequest.id.desc())
        .limit(query.limit)
        .offset(query.offset)
    )
    rows = [(request, user) for request, user in (await session.execute(statement)).all()]
    return rows, int(total or 0)
