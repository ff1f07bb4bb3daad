"""Answers of the event routes (the Python client imports these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

EventKindName = Literal[
    "allowance.threshold",
    "balance.low",
    "organization.over_allocated",
    "purchase.expiring",
    "purchase.expired",
    "period.began",
    "token_request.made",
    "token_request.decided",
    "policy.moved",
]
"""The kinds of events (events.service.EventKind), as a filter accepts them."""


class EventOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID | None = Field(description="The user it concerns, if one.")
    kind: str = Field(description="allowance.threshold, balance.low, ... (docs/events.md).")
    message: str = Field(description="One sentence an administrator reads.")
    data: dict[str, Any] = Field(description="Its ids and figures (whole numbers).")
    created_at: datetime


class EventPage(BaseModel):
    events: list[EventOut]
    total: int
    limit: int
    offset: int
