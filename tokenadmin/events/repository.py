"""The SQL of events: an insert that does nothing when the crossing is already recorded."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CursorResult
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.models import Event


async def insert_once(
    session: AsyncSession,
    *,
    org_id: uuid.UUID,
    user_id: uuid.UUID | None,
    kind: str,
    key: str,
    data: dict[str, Any],
    message: str,
    created_at: datetime,
) -> bool:
    """Insert the event unless (org_id, key) exists; True when a row was inserted."""
    insert = sqlite_insert if session.get_bind().dialect.name == "sqlite" else postgresql_insert
    result = await session.execute(
        insert(Event)
        .values(
            id=uuid7(),
            org_id=org_id,
            user_id=user_id,
            kind=kind,
            key=key,
            data=data,
            message=message,
            created_at=created_at,
        )
        .on_conflict_do_nothing(index_elements=["org_id", "key"])
    )
    assert isinstance(result, CursorResult)
    return bool(result.rowcount == 1)
