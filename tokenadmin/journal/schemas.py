from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from tokenadmin.models import JournalEntry


class JournalEntryOut(BaseModel):
    id: int
    created_at: datetime
    actor: str
    action: str
    kind: str | None
    amount: int
    user_id: uuid.UUID | None
    purchase_id: uuid.UUID | None
    reservation_id: uuid.UUID | None
    reason: str | None
    capacity_delta: int
    allocated_delta: int
    allowance_delta: int
    used_delta: int
    reserved_delta: int
    capacity_after: int | None
    allocated_after: int | None
    allowance_after: int | None
    used_after: int | None
    reserved_after: int | None
    details: dict[str, Any] | None

    @classmethod
    def of(cls, entry: JournalEntry) -> JournalEntryOut:
        return cls.model_validate(entry, from_attributes=True)


class JournalPage(BaseModel):
    entries: list[JournalEntryOut]
    next_before_id: int | None
