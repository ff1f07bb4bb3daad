from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime

PENDING_ONLY = text("state = 'pending'")


class TokenRequest(Base):
    """A member's request for more tokens of one kind: pending, then decided once
    (approved, possibly for another amount, denied or withdrawn). Each change of state is
    also an audit entry of the journal; approving raises the allowance through the
    allowance service, with its own journal entry."""

    __tablename__ = "token_requests"
    __table_args__ = (
        CheckConstraint("kind IN ('inference', 'training')", name="kind"),
        CheckConstraint("state IN ('pending', 'approved', 'denied', 'withdrawn')", name="state"),
        CheckConstraint("amount > 0", name="amount"),
        CheckConstraint("approved_amount IS NULL OR approved_amount > 0", name="approved_amount"),
        Index("ix_token_requests_org_id_state_created_at", "org_id", "state", "created_at"),
        Index("ix_token_requests_user_id_created_at", "user_id", "created_at"),
        # At most one pending request per user and kind (token_request.service says why).
        Index(
            "uq_token_requests_user_id_kind_pending",
            "user_id",
            "kind",
            unique=True,
            sqlite_where=PENDING_ONLY,
            postgresql_where=PENDING_ONLY,
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    approved_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
