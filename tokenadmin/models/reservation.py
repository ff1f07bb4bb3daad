from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime


class Reservation(Base):
    """Tokens held for a long or streaming operation until committed, released or expired."""

    __tablename__ = "reservations"
    __table_args__ = (
        CheckConstraint("kind IN ('inference', 'training')", name="kind"),
        CheckConstraint("status IN ('open', 'committed', 'released', 'expired')", name="status"),
        CheckConstraint("amount > 0", name="amount"),
        Index("ix_reservations_status_expires_at", "status", "expires_at"),
        Index("ix_reservations_user_id_status", "user_id", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="open")
    committed_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
