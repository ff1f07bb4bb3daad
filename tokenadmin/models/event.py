from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime


class Event(Base):
    """Something an administrator (or the member it concerns) should hear of: a user passed
    a threshold of an allowance, the balance fell low, a purchase expires, a token request
    was made or decided. Written once per crossing: `key` names the crossing, unique per
    organization, so a second writer of the same crossing inserts nothing (events/service.py).
    Never updated or deleted; webhooks and email read it and keep their own records."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("org_id", "key"),
        Index("ix_events_org_id_created_at", "org_id", "created_at"),
        Index("ix_events_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(200))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AlertState(Base):
    """Whether a condition of an organization that re-arms (its balance of a kind is low, it
    is over-allocated) holds, and how many times it began: `episode` names the crossing in
    the event's key. Changed only by conditional UPDATEs (false → true starts an episode,
    true → false re-arms), so of processes that see the same crossing one starts it."""

    __tablename__ = "alert_states"

    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(60), primary_key=True)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    episode: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
