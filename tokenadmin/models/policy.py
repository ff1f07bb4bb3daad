"""Allocation policies (tokenadmin.policy): the settings per organization and kind, the log
of the moves they made, and temporary boosts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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


class AllocationPolicy(Base):
    """One organization's policy for one kind: the floor and ceiling of every user's
    allowance, auto-increase (trigger, bump, cooldown) and the reclamation of idle
    allowances (after `idle_days`, every `reclaim_every_hours`). Off until `enabled`."""

    __tablename__ = "allocation_policies"
    __table_args__ = (
        UniqueConstraint("org_id", "kind", name="uq_allocation_policies_org_id_kind"),
        CheckConstraint("kind IN ('inference', 'training')", name="kind"),
        CheckConstraint(
            "preset IN ('conservative', 'standard', 'aggressive', 'custom')", name="preset"
        ),
        CheckConstraint("floor >= 0 AND floor <= ceiling", name="floor_ceiling"),
        CheckConstraint("trigger_percent BETWEEN 1 AND 100", name="trigger_percent"),
        CheckConstraint("(bump_percent IS NULL) <> (bump_amount IS NULL)", name="one_bump"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    preset: Mapped[str] = mapped_column(String(16))
    floor: Mapped[int] = mapped_column(BigInteger)
    ceiling: Mapped[int] = mapped_column(BigInteger)
    increase_enabled: Mapped[bool] = mapped_column(Boolean)
    trigger_percent: Mapped[int] = mapped_column(Integer)
    bump_percent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bump_amount: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cooldown_hours: Mapped[int] = mapped_column(Integer)
    reclaim_enabled: Mapped[bool] = mapped_column(Boolean)
    idle_days: Mapped[int] = mapped_column(Integer)
    reclaim_every_hours: Mapped[int] = mapped_column(Integer)
    last_reclaim_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(String(200))


class PolicyMove(Base):
    """One allowance change an allocation policy made (its log): who, which kind and rule,
    from and to, why, and the allowance batch (journal entries' `details.batch`) it was."""

    __tablename__ = "policy_moves"
    __table_args__ = (
        CheckConstraint("kind IN ('inference', 'training')", name="kind"),
        CheckConstraint("rule IN ('increase', 'reclaim', 'boost', 'boost_end')", name="rule"),
        Index("ix_policy_moves_org_id_created_at", "org_id", "created_at"),
        Index(
            "ix_policy_moves_user_id_kind_rule_created_at", "user_id", "kind", "rule", "created_at"
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    run_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(16))
    before: Mapped[int] = mapped_column(BigInteger)
    after: Mapped[int] = mapped_column(BigInteger)
    why: Mapped[str] = mapped_column(Text)
    batch: Mapped[str] = mapped_column(String(36))
    boost_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    actor: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Boost(Base):
    """A temporary raise of one user's allowance of one kind: applied when made, taken back
    (never below what the user used and reserved, nor the floor or the minimum) when it
    ends at `ends_at`, or earlier when ended by hand."""

    __tablename__ = "allowance_boosts"
    __table_args__ = (
        CheckConstraint("kind IN ('inference', 'training')", name="kind"),
        CheckConstraint("state IN ('active', 'ended')", name="state"),
        CheckConstraint("amount > 0", name="amount"),
        Index("ix_allowance_boosts_org_id_state_ends_at", "org_id", "state", "ends_at"),
        Index("ix_allowance_boosts_user_id_state", "user_id", "state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    org_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(200))
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    taken_back: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
