"""Token kinds, amounts and periods: the vocabulary every feature shares."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
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


def fmt(amount: int) -> str:
    return f"{amount:,}"
