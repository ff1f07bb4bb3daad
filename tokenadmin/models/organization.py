from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Boolean, CheckConstraint, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column
from uuid6 import uuid7

from tokenadmin.models.base import Base, UTCDateTime
from tokenadmin.tokens import DEFAULT_MINIMUM, Kind, balance

AUTO_APPROVE_DEFAULTS = {
    "auto_approve_max_amount": 1_000_000,
    "auto_approve_max_per_period": 1,
    "auto_approve_max_allocated_percent": 90,
}
"""The rule's numbers until an administrator sets them (it is off until enabled)."""

ALERT_DEFAULTS: dict[str, Any] = {"alert_thresholds": [80, 100], "alert_balance_below_percent": 10}
"""The alert settings until an administrator sets them."""


class Organization(Base):
    """An enterprise account with its policy and its two stored balances per kind.

    `capacity_*` is the sum of its purchases not yet expired; `allocated_*` the sum of its
    users' allowances (a deactivated user keeps an allowance equal to what they used until
    the period ends). Both only change together with a journal entry.
    """

    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint("period IN ('monthly', 'none')", name="period"),
        CheckConstraint("min_inference >= 0 AND min_training >= 0", name="minimums"),
        CheckConstraint("capacity_inference >= 0 AND capacity_training >= 0", name="capacity"),
        CheckConstraint("allocated_inference >= 0 AND allocated_training >= 0", name="allocated"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid7)
    name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    period: Mapped[str] = mapped_column(String(16), default="monthly")
    min_inference: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_MINIMUM[Kind.inference])
    min_training: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_MINIMUM[Kind.training])
    overallocation: Mapped[bool] = mapped_column(Boolean, default=False)
    capacity_inference: Mapped[int] = mapped_column(BigInteger, default=0)
    capacity_training: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated_inference: Mapped[int] = mapped_column(BigInteger, default=0)
    allocated_training: Mapped[int] = mapped_column(BigInteger, default=0)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime)
    next_expiry_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The hash of the newest journal entry without a user (journal/chain.py).
    journal_head: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Rule 3's running totals (SPEC section 3): this period's used and the reserved of the
    # users, summed per kind, kept only while the capacity binds (`binds`), when every
    # metering transaction of the organization locks this row anyway and adds what it
    # changes (`journal.service.record`); all None otherwise, when metering never writes
    # this row. The first metering transaction that finds them None sums the users once
    # (`usage.service`); a new period, or a change after which the capacity no longer
    # binds, sets them back to None (`forget_usage`). `verify` checks them against the
    # users (migration 0018).
    used_inference: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    used_training: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reserved_inference: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    reserved_training: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The models its users may call (None: every model of the catalog), and where the
    # gateway sends a model's requests when the model names no upstream of its own
    # (catalog/service.py). The upstream key is write-only: no surface returns it.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    upstream_base_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    upstream_api_key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The auto-approval rule (token_request/service.py): a request of at most
    # `max_amount` tokens (of either kind) is approved at once, for at most `max_per_period`
    # such requests per user and period, while the kind's allocated share of the capacity
    # after the grant stays at most `max_allocated_percent` %.
    auto_approve_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_approve_max_amount: Mapped[int] = mapped_column(
        BigInteger, default=AUTO_APPROVE_DEFAULTS["auto_approve_max_amount"]
    )
    auto_approve_max_per_period: Mapped[int] = mapped_column(
        Integer, default=AUTO_APPROVE_DEFAULTS["auto_approve_max_per_period"]
    )
    auto_approve_max_allocated_percent: Mapped[int] = mapped_column(
        Integer, default=AUTO_APPROVE_DEFAULTS["auto_approve_max_allocated_percent"]
    )

    # Alerts (events/service.py): the percents of an allowance whose passing is an event, and
    # the percent of a kind's capacity below which its balance is low.
    alert_thresholds: Mapped[list[int]] = mapped_column(
        JSON, default=lambda: list(ALERT_DEFAULTS["alert_thresholds"])
    )
    alert_balance_below_percent: Mapped[int] = mapped_column(
        Integer, default=ALERT_DEFAULTS["alert_balance_below_percent"]
    )

    def capacity(self, kind: Kind) -> int:
        return self.capacity_inference if kind is Kind.inference else self.capacity_training

    def allocated(self, kind: Kind) -> int:
        return self.allocated_inference if kind is Kind.inference else self.allocated_training

    def balance(self, kind: Kind) -> int:
        return balance(self.capacity(kind), self.allocated(kind))

    def minimum(self, kind: Kind) -> int:
        return self.min_inference if kind is Kind.inference else self.min_training

    def add_capacity(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.capacity_inference += delta
        else:
            self.capacity_training += delta
        self._binding_changed()

    def add_allocated(self, kind: Kind, delta: int) -> None:
        if kind is Kind.inference:
            self.allocated_inference += delta
        else:
            self.allocated_training += delta
        self._binding_changed()

    def over_allocated(self, kind: Kind) -> bool:
        """Whether rule 3 binds: usage must then also fit the organization's capacity."""
        return self.allocated(kind) > self.capacity(kind)

    def binds(self) -> bool:
        """Whether rule 3 binds for either kind: metering then locks this row."""
        return self.over_allocated(Kind.inference) or self.over_allocated(Kind.training)

    def counted_usage(self, period_start: datetime) -> dict[Kind, tuple[int, int]] | None:
        """(used, reserved) per kind over the users in the period starting at
        `period_start`, from the running totals; None when they are not kept (or are of
        an earlier period: a new one began and the upkeep that forgets them is due)."""
        totals = (self.used_inference, self.reserved_inference)
        more = (self.used_training, self.reserved_training)
        if None in totals or None in more or period_start != self.period_start:
            return None
        return {
            Kind.inference: cast(tuple[int, int], totals),
            Kind.training: cast(tuple[int, int], more),
        }

    def count_usage(self, usage: dict[Kind, tuple[int, int]]) -> None:
        """Start the running totals from the users' sums (`period_usage`), taken under
        this row's lock while the capacity binds."""
        assert self.binds()
        self.used_inference, self.reserved_inference = usage[Kind.inference]
        self.used_training, self.reserved_training = usage[Kind.training]

    def add_usage(self, kind: Kind, used: int, reserved: int) -> None:
        """Add a user's change to the running totals, if they are kept."""
        counted = self.counted_usage(self.period_start)
        if counted is None:
            return
        was_used, was_reserved = counted[kind]
        if kind is Kind.inference:
            self.used_inference, self.reserved_inference = was_used + used, was_reserved + reserved
        else:
            self.used_training, self.reserved_training = was_used + used, was_reserved + reserved

    def forget_usage(self) -> None:
        """Stop keeping the running totals (a new period; the capacity no longer binds)."""
        if self.used_inference is not None:
            self.used_inference = self.used_training = None
            self.reserved_inference = self.reserved_training = None

    def _binding_changed(self) -> None:
        # Metering adds to the totals only while it locks this row: while the capacity binds.
        if not self.binds():
            self.forget_usage()
