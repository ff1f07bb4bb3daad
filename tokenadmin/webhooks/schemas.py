"""Bodies and answers of the webhook routes (the Python client imports these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool

from tokenadmin.schemas import Answer, Input, Text

DeliveryState = Literal["pending", "delivered", "failed"]
Url = Annotated[Text, Field(min_length=1, max_length=2000)]
Description = Annotated[Text, Field(max_length=200)]
EventKindName = Annotated[Text, Field(min_length=1, max_length=40)]
Kinds = Annotated[list[EventKindName], Field(max_length=50)]


class WebhookCreate(Input):
    url: Url = Field(
        description="Where events are POSTed: https, or http to 127.0.0.1 or localhost."
    )
    kinds: Kinds | None = Field(
        default=None, description="The event kinds sent; leave out (or null) for every kind."
    )
    enabled: StrictBool = True
    description: Description | None = None


class WebhookUpdate(Input):
    url: Url | None = None
    kinds: Kinds | None = Field(
        default=None, description="The event kinds sent; an empty list sends every kind."
    )
    enabled: StrictBool | None = None
    description: Description | None = None


class WebhookOut(Answer):
    id: uuid.UUID
    org_id: uuid.UUID
    url: str
    kinds: list[str] | None = Field(description="The event kinds sent; null: every kind.")
    enabled: bool
    description: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime


class WebhookSecretOut(WebhookOut):
    secret: str = Field(description="The signing secret, shown in this answer only: store it now.")


class AttemptOut(Answer):
    sequence: int
    at: datetime
    status_code: int | None
    response_excerpt: str | None = Field(description="The start of the answer (at most 1 KB).")
    error: str | None = Field(description="Why no answer came (timeout, refused connection).")
    duration_ms: int


class DeliveryOut(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_kind: str
    event_message: str
    state: DeliveryState
    sequence: int = Field(description="1, and one more for each resend.")
    attempts: int = Field(description="Attempts of the current sequence.")
    first_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When the next attempt is due.")
    last_status_code: int | None
    created_at: datetime
    finished_at: datetime | None
    attempt_log: list[AttemptOut] = Field(description="Every attempt, oldest first.")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    total: int
