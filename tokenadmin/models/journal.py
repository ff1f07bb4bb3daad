from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from tokenadmin.models.base import Base, BigIntPK, UTCDateTime


class JournalEntry(Base):
    """One change of tokens (or an audited change without tokens). Never updated or deleted.

    The `*_delta` columns are what the change moved; summing them over an organization's
    entries gives every stored balance (capacity and allocated of the organization,
    allowance, used and reserved of each user). The `*_after` columns are the balances the
    change left, so each entry can be read on its own.
    """

    __tablename__ = "journal_entries"
    __table_args__ = (
        Index("ix_journal_entries_org_id_id", "org_id", "id"),
        Index("ix_journal_entries_user_id_id", "user_id", "id"),
        Index("ix_journal_entries_org_id_created_at", "org_id", "created_at"),
        Index("ix_journal_entries_org_id_action_id", "org_id", "action", "id"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    reservation_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    capacity_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    allowance_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    used_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_delta: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    allocated_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    allowance_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reserved_after: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The hash chain (journal/chain.py): the hash of the entry before this one in its chain,
    # and this entry's own.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
