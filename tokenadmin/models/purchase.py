from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime
from tokenadmin.tokens import Kind


class Purchase(Base):
    __tablename__ = "purchases"
    __table_args__ = (
        CheckConstraint("inference_amount >= 0 AND training_amount >= 0", name="amounts"),
        Index("ix_purchases_org_id_purchased_on", "org_id", "purchased_on"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    inference_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    training_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    purchased_on: Mapped[date] = mapped_column(Date)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, nullable=True, doc="When the expiry was recorded in the journal."
    )
    payer: Mapped[str] = mapped_column(String(200), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))

    @property
    def expired(self) -> bool:
        """Whether its tokens have left the capacity."""
        return self.expired_at is not None

    def amount(self, kind: Kind) -> int:
        return self.inference_amount if kind is Kind.inference else self.training_amount
