"""Organizations: policy, purchases (capacity), period starts and the token balance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache, partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import tokens
from tokenadmin.act import Act
from tokenadmin.amounts import check_amount
from tokenadmin.database import Database, lock_organization
from tokenadmin.errors import InvalidRequest, NotFound, RuleRefused
from tokenadmin.events import service as events
from tokenadmin.journal.service import record, record_returned
from tokenadmin.models import Organization, Purchase
from tokenadmin.models.organization import ALERT_DEFAULTS, AUTO_APPROVE_DEFAULTS
from tokenadmin.organization import repository
from tokenadmin.tokens import DEFAULT_MINIMUM, Kind, Period, fmt, period_start
from tokenadmin.tokens import current_period as current_period  # re-exported
from tokenadmin.tokens import current_period_end as current_period_end  # re-exported
from tokenadmin.user.periods import reset_usage

EXPIRY_WARNING = timedelta(days=30)


@cache
def _time_zones() -> frozenset[str]:
    # IANA names only: not 'localtime' (the server's own zone) nor other files of zoneinfo,
    # so every server reads an organization's periods alike.
    return frozenset(available_timezones()) - {"localtime"}


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
        if name not in _time_zones():
            raise ZoneInfoNotFoundError(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise InvalidRequest(
            f"Unknown time zone '{name}'. Use an IANA name such as Europe/Berlin or UTC.",
            code="invalid_time_zone",
            details={"time_zone": name},
        ) from error
    return name


async def create(
    session: AsyncSession,
    act: Act,
    *,
    name: str,
    time_zone: str = "UTC",
    period: Period = Period.monthly,
    min_inference: int = DEFAULT_MINIMUM[Kind.inference],
    min_training: int = DEFAULT_MINIMUM[Kind.training],
    overallocation: bool = False,
) -> Organization:
    check_time_zone(time_zone)
    org = Organization(
        id=uuid.uuid4(),
        name=name,
        time_zone=time_zone,
        period=period.value,
        min_inference=min_inference,
        min_training=min_training,
        overallocation=overallocation,
        auto_approve_enabled=False,
        **AUTO_APPROVE_DEFAULTS,
        alert_thresholds=list(ALERT_DEFAULTS["alert_thresholds"]),
        alert_balance_below_percent=ALERT_DEFAULTS["alert_balance_below_percent"],
        capacity_inference=0,
        capacity_training=0,
        allocated_inference=0,
        allocated_training=0,
        period_start=period_start(period, time_zone, act.now),
        version=1,
        created_at=act.now,
        updated_at=act.now,
    )
    session.add(org)
    record(session, act, org, "organization_created", details={"name": name})
    return org


async def get(session: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await repository.get(session, org_id)
    if org is None:
        raise NotFound("Organization not found.")
    return org


def in_zone(moment: datetime | None, org: Organization) -> datetime | None:
    """A moment as UTC; one without an offset (a purchase's expiry typed as a date and
    time) is read in the organization's time zone."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(org.time_zone))
    return moment.astimezone(UTC)


async def lock_for_change(session: AsyncSession, act: Act, org_id: uuid.UUID) -> Organization:
    """Take the organization for a change of its token state, brought up to `act.now`."""
    await lock_organization(session, org_id, shared=False)
    org = await repository.get(session, org_id, fresh=True)
    if org is None:
        raise NotFound("Organization not found.")
    await bring_up_to_date(session, act, org)
    return org


async def up_to_date(db: Database, org_id: uuid.UUID, now: datetime) -> None:
    """Before a read: record what time alone made due (an expiry, a new period)."""
    org = await db.read(lambda session: get(session, org_id))
    if maintenance_due(org, now):
        await db.write(partial(lock_for_change, act=Act("system", now), org_id=org_id))


def maintenance_due(org: Organization, now: datetime) -> bool:
    """Whether a purchase has expired or a period has begun since the last change."""
    if org.next_expiry_at is not None and org.next_expiry_at <= now:
        return True
    return org.period_start != current_period(org, now)


async def bring_up_to_date(session: AsyncSession, act: Act, org: Organization) -> None:
    """Record expired purchases and the start of a new period. Needs the exclusive lock."""
    if org.next_expiry_at is not None and org.next_expiry_at <= act.now:
        for purchase in await repository.due_purchases(session, org.id, act.now):
            _record_capacity(session, act, org, purchase, "purchase_expired", -1)
            purchase.expired_at = act.now
            await events.purchase_expired(session, act, org, purchase)
        await session.flush()
        org.next_expiry_at = await repository.next_expiry(session, org.id)
        await events.balance_alerts(session, act, org)  # the capacity fell
    start = current_period(org, act.now)
    if org.period_start != start:
        await _start_period(session, act, org, start)


async def _start_period(
    session: AsyncSession, act: Act, org: Organization, start: datetime
) -> None:
    """A new period: deactivated users give back what they used. Active users' counters
    restart lazily, each with its own journal entry, the next time they are written."""
    org.forget_usage()  # rule 3's totals are of the period that ended
    for user in await repository.users_with_retained_allowance(session, org.id):
        for kind in Kind:
            retained = user.allowance(kind)
            if retained or user.used(kind):
                record_returned(
                    session,
                    act,
                    org,
                    "period_reset",
                    user,
                    kind,
                    retained,
                    used=-user.used(kind),
                    reason="period started; a deactivated user's usage returns to the balance",
                )
        user.period_start = start
    # A period that begins where an earlier one began (the period changed to `none` and
    # back within a month, or back and forth): counters labelled with that start belong to
    # the earlier period, and restart now rather than count in this one.
    for user in await repository.users_with_usage_since(session, org.id, start):
        reset_usage(session, act, org, user)
    record(
        session,
        act,
        org,
        "period_started",
        details={"period_start": start.isoformat(), "previous": org.period_start.isoformat()},
    )
    await events.period_began(session, act, org, start, org.period_start)
    org.period_start = start


AUTO_APPROVAL_FIELDS = ("auto_approve_enabled", *AUTO_APPROVE_DEFAULTS)
"""The auto-approval rule's part of the policy (Organization's auto_approve_* columns)."""

_POLICY_FIELDS = (
    "name",
    "time_zone",
    "period",
    "min_inference",
    "min_training",
    "overallocation",
    *AUTO_APPROVAL_FIELDS,
    "alert_thresholds",
    "alert_balance_below_percent",
)


async def update_policy(
    session: AsyncSession, act: Act, org: Organization, changes: dict[str, Any]
) -> Organization:
    """Change name and policy. A minimum can't rise above what active users already have."""
    if "time_zone" in changes:
        check_time_zone(changes["time_zone"])
    check_auto_approval(changes)
    events.check_alert_settings(changes)
    for kind, field in ((Kind.inference, "min_inference"), (Kind.training, "min_training")):
        new_minimum = changes.get(field)
        if new_minimum is not None and new_minimum > org.minimum(kind):
            below = await repository.count_below_minimum(session, org.id, kind, new_minimum)
            if below:
                raise RuleRefused(
                    f"{below:,} active users have less than {fmt(new_minimum)} {kind} tokens;"
                    " raise their allowances before raising the minimum.",
                    code="below_minimum",
                    details={"kind": kind.value, "minimum": new_minimum, "users_below": below},
                )
    if changes.get("overallocation") is False and org.overallocation:
        _check_within_capacity(org)
    old_zone = org.time_zone
    changed = {}
    for field in _POLICY_FIELDS:
        if field in changes and changes[field] is not None:
            value = changes[field]
            value = value.value if isinstance(value, Period) else value
            if getattr(org, field) != value:
                changed[field] = [getattr(org, field), value]
                setattr(org, field, value)
    if changed:
        org.version += 1
        org.updated_at = act.now
        record(session, act, org, "policy_changed", details=changed)
        start = current_period(org, act.now)
        if start != org.period_start:
            # A later month has begun in the new zone, or the period itself changed.
            await _start_period(session, act, org, start)
        elif org.time_zone != old_zone and Period(org.period) is Period.monthly:
            # The same month, seen from a zone where it began later: the period's start
            # moves there and its usage stays. (Where it began earlier, the start stays: a
            # period never reaches back over time that a past period already covered.)
            own_start = period_start(org.period, org.time_zone, act.now)
            if own_start > org.period_start:
                await _move_period_start(session, act, org, own_start)
    return org


AUTO_APPROVAL_LIMITS = {
    "auto_approve_max_per_period": (
        0,
        10_000,
        "The number of requests approved at once per user and period",
    ),
    "auto_approve_max_allocated_percent": (
        0,
        100,
        "The allocated share of the capacity (percent) up to which requests are approved at once",
    ),
}


def check_auto_approval(changes: dict[str, Any]) -> None:
    """The auto-approval rule's numbers: whole, within their range (422 naming the field)."""
    enabled = changes.get("auto_approve_enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise InvalidRequest(
            "Auto-approval is on (true) or off (false).", details={"field": "auto_approve_enabled"}
        )
    largest = changes.get("auto_approve_max_amount")
    if largest is not None:
        try:
            check_amount(largest)
        except InvalidRequest as error:
            raise InvalidRequest(
                f"The largest request approved at once: {error.message}",
                code="invalid_amount",
                details={"field": "auto_approve_max_amount"},
            ) from None
    for field, (low, high, words) in AUTO_APPROVAL_LIMITS.items():
        value = changes.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(
                f"{words} is a whole number from {low} to {high:,}.",
                details={"field": field},
            )


def _check_within_capacity(org: Organization) -> None:
    """Overallocation goes off only where allocated fits the capacity (rule 1), or the
    organization would be left over-allocated with no rule to bring it back."""
    for kind in Kind:
        shortfall = org.allocated(kind) - org.capacity(kind)
        if shortfall > 0:
            raise RuleRefused(
                f"{fmt(org.allocated(kind))} {kind} tokens are allocated but the capacity is"
                f" {fmt(org.capacity(kind))}; lower allowances by {fmt(shortfall)} or buy more"
                " before turning overallocation off.",
                code="exceeds_balance",
                details={
                    "kind": kind.value,
                    "capacity": org.capacity(kind),
                    "allocated": org.allocated(kind),
                    "shortfall": shortfall,
                },
            )


async def _move_period_start(
    session: AsyncSession, act: Act, org: Organization, start: datetime
) -> None:
    """The current period's start moves later within its month (a time zone change): its
    counters are relabelled with the new start. Counters already labelled with that start
    belong to an earlier period that began there (the period changed to `none` and back,
    say), and restart first, as at a period's start (`_start_period`), rather than count
    in this one."""
    for user in await repository.users_with_usage_since(session, org.id, start):
        reset_usage(session, act, org, user)
    await session.flush()
    await repository.move_period_start(session, org.id, org.period_start, start)
    org.forget_usage()  # summed again from the relabelled counters when next needed
    org.period_start = start


async def record_purchase(
    session: AsyncSession,
    act: Act,
    org: Organization,
    *,
    inference_amount: int,
    training_amount: int,
    purchased_on: date | None,
    expires_at: datetime | None,
    payer: str,
    note: str,
) -> Purchase:
    if inference_amount <= 0 and training_amount <= 0:
        raise InvalidRequest(
            "A purchase needs a positive inference or training amount.", code="invalid_amount"
        )
    check_amount(inference_amount, field="inference_amount")
    check_amount(training_amount, field="training_amount")
    expires_at = in_zone(expires_at, org)
    if expires_at is not None and expires_at <= act.now:
        raise InvalidRequest(
            "The expiry must be in the future.",
            code="invalid_expiry",
            details={"expires_at": expires_at.isoformat()},
        )
    local_today = act.now.astimezone(ZoneInfo(org.time_zone)).date()
    purchase = Purchase(
        id=uuid.uuid4(),
        org_id=org.id,
        inference_amount=inference_amount,
        training_amount=training_amount,
        purchased_on=purchased_on or local_today,
        expires_at=expires_at,
        payer=payer,
        note=note,
        created_at=act.now,
        created_by=act.actor,
    )
    session.add(purchase)
    details = {"payer": payer} if payer else None
    _record_capacity(session, act, org, purchase, "purchase", 1, note or None, details)
    if expires_at is not None and (org.next_expiry_at is None or expires_at < org.next_expiry_at):
        org.next_expiry_at = expires_at
    org.updated_at = act.now
    return purchase


def _record_capacity(
    session: AsyncSession,
    act: Act,
    org: Organization,
    purchase: Purchase,
    action: str,
    sign: int,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """A purchase's tokens join (`sign` 1) or leave (-1) the capacity: an entry per kind
    it has tokens of."""
    for kind in Kind:
        amount = purchase.amount(kind)
        if amount:
            record(
                session,
                act,
                org,
                action,
                kind=kind,
                amount=amount,
                capacity=sign * amount,
                purchase_id=purchase.id,
                reason=reason,
                details=details,
            )


async def change_purchase_expiry(
    session: AsyncSession,
    act: Act,
    org: Organization,
    purchase_id: uuid.UUID,
    expires_at: datetime | None,
) -> Purchase:
    """Set or clear a purchase's expiry (one without an offset is read in the organization's
    time zone); an expiry at or before now expires it at once."""
    expires_at = in_zone(expires_at, org)
    purchase = await repository.get_purchase(session, purchase_id)
    if purchase is None or purchase.org_id != org.id:
        raise NotFound("Purchase not found.")
    if purchase.expired_at is not None:
        raise RuleRefused(
            "This purchase has already expired.",
            code="purchase_expired",
            details={"expired_at": purchase.expired_at.isoformat()},
        )
    before = purchase.expires_at
    purchase.expires_at = expires_at
    record(
        session,
        act,
        org,
        "purchase_expiry_changed",
        purchase_id=purchase.id,
        details={
            "before": before.isoformat() if before else None,
            "after": expires_at.isoformat() if expires_at else None,
        },
    )
    await session.flush()
    org.next_expiry_at = await repository.next_expiry(session, org.id)
    await bring_up_to_date(session, act, org)
    return purchase


async def list_purchases(session: AsyncSession, org: Organization) -> Sequence[Purchase]:
    return await repository.purchases(session, org.id)


@dataclass(frozen=True)
class KindBalance:
    capacity: int
    allocated: int
    used: int
    reserved: int

    @property
    def balance(self) -> int:
        """What is left to hand out: negative when over-allocated."""
        return tokens.balance(self.capacity, self.allocated)

    @property
    def shortfall(self) -> int:
        return max(0, self.allocated - self.capacity)


@dataclass(frozen=True)
class Balance:
    org: Organization
    period_start: datetime | None
    period_end: datetime | None
    kinds: dict[Kind, KindBalance]
    expiring: Sequence[Purchase]


_usage_cache: dict[tuple[uuid.UUID, datetime], tuple[float, dict[Kind, tuple[int, int]]]] = {}


async def _period_usage(
    session: AsyncSession, org_id: uuid.UUID, start: datetime, max_age: float
) -> dict[Kind, tuple[int, int]]:
    """Used and reserved over the organization's users. Summing them reads every user, so a
    page that only shows them may accept figures up to `max_age` seconds old."""
    key = (org_id, start)
    cached = _usage_cache.get(key)
    if max_age > 0 and cached is not None and time.monotonic() - cached[0] <= max_age:
        return cached[1]
    usage = await repository.period_usage(session, org_id, start)
    if len(_usage_cache) > 10_000:
        _usage_cache.clear()
    _usage_cache[key] = (time.monotonic(), usage)
    return usage


async def balance(
    session: AsyncSession, org: Organization, now: datetime, *, usage_max_age: float = 0.0
) -> Balance:
    """Capacity and allocated as stored now; used and reserved this period from rule 3's
    running totals where they are kept, else summed over the users (or, with
    `usage_max_age`, as summed at most that many seconds ago)."""
    start = current_period(org, now)
    usage = org.counted_usage(start) or await _period_usage(session, org.id, start, usage_max_age)
    kinds = {
        kind: KindBalance(
            capacity=org.capacity(kind),
            allocated=org.allocated(kind),
            used=usage[kind][0],
            reserved=usage[kind][1],
        )
        for kind in Kind
    }
    expiring = [
        p
        for p in await repository.purchases(session, org.id)
        if p.expired_at is None
        and p.expires_at is not None
        and p.expires_at <= now + EXPIRY_WARNING
    ]
    return Balance(
        org=org,
        period_start=None if org.period == Period.none else start,
        period_end=current_period_end(org, now),
        kinds=kinds,
        expiring=expiring,
    )
