"""Token kinds, amounts and periods: the vocabulary every feature shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

MAX_AMOUNT = 2**53
"""Largest amount accepted anywhere (SPEC rule 8: beyond 2^53 is absurd)."""

FOREVER = datetime(1970, 1, 1, tzinfo=UTC)
"""The single period of an organization whose period is `none`."""


class Kind(StrEnum):
    inference = "inference"
    training = "training"


class Period(StrEnum):
    monthly = "monthly"
    none = "none"


ALLOWANCE_FIELD = {Kind.inference: "max_tokens", Kind.training: "max_train_tokens"}
"""The field that holds the allowance of each kind, in the API, the CSV and the database."""

ALLOWANCE_LABEL = {Kind.inference: "Max Tokens", Kind.training: "Max Train Tokens"}
"""The product's names for the allowance of each kind, as administrators read them."""

DEFAULT_MINIMUM = {Kind.inference: 200_000, Kind.training: 0}
"""An organization's minimum allowance per kind unless its policy says otherwise (rule 4)."""


def balance(capacity: int, allocated: int) -> int:
    """The token balance of a kind: what an administrator still has to hand out."""
    return capacity - allocated


def period_start(period: Period | str, time_zone: str, now: datetime) -> datetime:
    """Start (UTC) of the period that contains `now` for an organization's policy."""
    if Period(period) is Period.none:
        return FOREVER
    zone = ZoneInfo(time_zone)
    local = now.astimezone(zone)
    return datetime(local.year, local.month, 1, tzinfo=zone).astimezone(UTC)


def period_end(period: Period | str, time_zone: str, now: datetime) -> datetime | None:
    """End (UTC, exclusive) of the period that contains `now`; None when it never ends."""
    if Period(period) is Period.none:
        return None
    zone = ZoneInfo(time_zone)
    local = now.astimezone(zone)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=zone).astimezone(UTC)


ZONE_SPREAD = timedelta(days=2)
"""More than the largest difference between two time zones' offsets (26 hours): two days
after a period's start is inside the calendar month it stands for, in any zone."""


class PeriodPolicy(Protocol):
    """What the period of an organization depends on (an `Organization` has it)."""

    @property
    def period(self) -> str: ...
    @property
    def time_zone(self) -> str: ...
    @property
    def period_start(self) -> datetime: ...


def _month(moment: datetime, time_zone: str) -> tuple[int, int]:
    local = moment.astimezone(ZoneInfo(time_zone))
    return local.year, local.month


def current_period(org: PeriodPolicy, now: datetime) -> datetime:
    """Start of the organization's period at `now`.

    Each calendar month has one period, and a period stands for the month it began in (in
    the zone of that moment). A new period begins only when a later month begins in the
    organization's zone: after a time zone change to a zone still in the month before, the
    period goes on, with its usage, until the month after the one it stands for; it never
    goes back to a month whose allowance was already given (nor when a clock runs behind).
    """
    start = period_start(org.period, org.time_zone, now)
    if Period(org.period) is Period.none:
        return start
    if _month(now, org.time_zone) > _month(org.period_start + ZONE_SPREAD, org.time_zone):
        return start
    return org.period_start


def current_period_end(org: PeriodPolicy, now: datetime) -> datetime | None:
    """End (exclusive) of the period at `now`: the start of the month after the one it
    stands for, in the organization's zone; None when it never ends."""
    if Period(org.period) is Period.none:
        return None
    return period_end(org.period, org.time_zone, current_period(org, now) + ZONE_SPREAD)


def fmt(amount: int) -> str:
    return f"{amount:,}"
