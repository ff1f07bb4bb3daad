from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime
from tokenadmin.tokens import Kind


class User(Base):
    """A person of one organization, with an allowance and this period's counters per kind.

    `inference_used` / `training_used` belong to the period that starts at `period_start`;
    when a new period has begun they count as 0 until the user is next written, which
    records the reset in the journal. `version` changes on every change an administrator
    can make (allowances, name, role, status), not on usage.
    """

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'member')", name="role"),
        CheckConstraint("status IN ('active', 'deactivated')", name="status"),
        CheckConstraint(
            "inference_used >= 0 AND inference_reserved >= 0"
            " AND inference_used + inference_reserved <= max_tokens",
            name="inference_within_allowance",
        ),
        CheckConstraint(
            "training_used >= 0 AND training_reserved >= 0"
            " AND training_used + training_reserved <= max_train_tokens",
            name="training_within_allowance",
        ),
        Index("ix_users_org_id_email", "org_id", "email"),
        Index("ix_users_org_id_status", "org_id", "status"),
        # The user table's sort by name, ties broken by id (migration 0003, which also adds
        # the search indexes: pg_trgm on PostgreSQL, an FTS5 trigram table on SQLite); it
        # also serves every lookup by (org_id, name) (migration 0014). The sorts by an
        # allowance are AllowanceOrder's: no index of this table holds an allowance, so an
        # allowance change updates users in place (migration 0016). No index holds the last
        # activity either: metering moves it once a minute a user, in place (0017).
        Index("ix_users_org_id_name_id", "org_id", "name", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="member")
    status: Mapped[str] = mapped_column(String(16), default="active")
    max_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    max_train_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    inference_used: Mapped[int] = mapped_column(BigInteger, default=0)
    training_used: Mapped[int] = mapped_column(BigInteger, default=0)
    inference_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    training_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(Integer, default=1)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The hash of the user's newest journal entry (journal/chain.py); written with it.
    journal_head: Mapped[str | None] = mapped_column(String(64), nullable=True)

    @property
    def active(self) -> bool:
        return self.status == "active"

    def allowance(self, kind: Kind) -> int:
        return self.max_tokens if kind is Kind.inference else self.max_train_tokens

    def used(self, kind: Kind) -> int:
        return self.inference_used if kind is Kind.inference else self.training_used

    def reserved(self, kind: Kind) -> int:
        return self.inference_reserved if kind is Kind.inference else self.training_reserved

    def used_in(self, kind: Kind, period_start: datetime) -> int:
        """Used in the period starting at `period_start` (0 if the counters are older)."""
        return self.used(kind) if self.period_start == period_start else 0

    def remaining(self, kind: Kind, period_start: datetime) -> int:
        return self.allowance(kind) - self.used_in(kind, period_start) - self.reserved(kind)

    def set_allowance(self, kind: Kind, value: int) -> None:
        if kind is Kind.inference:
            self.max_tokens = value
        else:
            self.max_train_tokens = value

    def add_used(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.inference_used += delta
        else:
            self.training_used += delta

    def add_reserved(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.inference_reserved += delta
        else:
            self.training_reserved += delta


class AllowanceOrder(Base):
    """The user table's sort orders by allowance: each user's allowances, a row per user,
    kept equal to `users` by triggers of migration 0016 (a row inserted with the user, its
    allowances copied when they change, deleted with the user). Never written by
    tokenadmin itself.

    On `users` these indexes would make every allowance change rewrite every index of the
    user's row (an update that changes an indexed column can't be made in place); here an
    allowance change rewrites only this narrow row and its three index entries.
    """

    __tablename__ = "allowance_order"
    __table_args__ = (
        Index("ix_allowance_order_org_id_max_tokens_user_id", "org_id", "max_tokens", "user_id"),
        Index(
            "ix_allowance_order_org_id_max_train_tokens_user_id",
            "org_id",
            "max_train_tokens",
            "user_id",
        ),
        {"sqlite_with_rowid": False},
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    org_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    max_tokens: Mapped[int] = mapped_column(BigInteger)
    max_train_tokens: Mapped[int] = mapped_column(BigInteger)
