from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tokenadmin.schemas import Answer, Moment, Text
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    pass


CHANGES = (
    "capacity_delta",
    "allocated_delta",
    "allowance_delta",
    "used_delta",
    "reserved_delta",
    "capacity_after",
    "allocated_after",
    "allowance_after",
    "used_after",
    "reserved_after",
)
"""The columns of what an entry changed, in the journal's order: the organization's and the
user's balances, by how much (`_delta`), then what they were after (`_after`); for the
journal's hash chain, its CSV and anything that lists an entry's changes."""


class JournalQuery(BaseModel):
    """The journal's filters and page, as GET /v1/organizations/{org_id}/journal takes them
    (query parameters)."""

    user: Text | None = Field(
        default=None,
        min_length=1,
        max_length=320,
        description="Entries of this user: an id or an email (one not in the organization: 404).",
    )
    kind: Kind | None = None
    action: Text | None = Field(default=None, max_length=32)
    actor: Text | None = Field(default=None, max_length=200)
    since: Moment | None = Field(
        default=None,
        description="Entries from this time on: ISO 8601 with an offset, such as"
        " 2026-03-01T00:00:00Z.",
    )
    until: Moment | None = Field(
        default=None,
        description="Entries before this time: ISO 8601 with an offset, such as"
        " 2026-04-01T00:00:00Z.",
    )
    before_id: int | None = Field(default=None, ge=1)
    limit: int = Field(default=100, ge=1, le=1000)


class JournalEntryOut(Answer):
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


class JournalPage(BaseModel):
    entries: list[JournalEntryOut]
    next_before_id: int | None
