"""The SQL of the Ask Sage access tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.models import AccessToken, ApiKey


async def get(session: AsyncSession, token_hash: str) -> AccessToken | None:
    return await session.get(AccessToken, token_hash)


async def key_of(session: AsyncSession, token: AccessToken) -> ApiKey | None:
    return await session.get(ApiKey, token.api_key_id)


async def delete_expired(session: AsyncSession, now: datetime) -> int:
    result = await session.execute(delete(AccessToken).where(AccessToken.expires_at <= now))
    return int(getattr(result, "rowcount", 0) or 0)
