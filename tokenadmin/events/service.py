"""Events: what an administrator (or the member it concerns) should hear of, recorded once
per crossing (docs/events.md).

Every event names its crossing with a dedupe `key`, unique per organization, and is
inserted with INSERT .. ON CONFLICT DO NOTHING in the caller's transaction: of many
requests or server processes that see the same crossing exactly one inserts it, and an
event is only there when the change that caused it committed.

Decisions of this module:
- A user's threshold is crossed by usage (`used`, not reservations: a reservation may be
  released): before < percent x allowance <= after, checked in the metering transaction
  that holds the user's row lock, from the figures it already has (no statement unless a
  threshold is crossed). The key holds the user, kind, period, percent and the allowance,
  so a raise of the allowance and a new crossing of it is a new event.
- Conditions that come and go (a kind's balance is low, the organization is
  over-allocated) keep an alert state: a conditional UPDATE starts an episode when the
  condition begins, and ends it when it stops; the episode number is in the key.
- The others have a natural key: a purchase (and its expiry), a period's start, a token
  request and its decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol, get_args
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.errors import InvalidRequest
from tokenadmin.events import repository
from tokenadmin.events.repository import EventQuery
from tokenadmin.events.schemas import EventKindName, EventOut, EventPage
from tokenadmin.models import Organization, Purchase, TokenRequest, User
from tokenadmin.tokens import ALLOWANCE_LABEL, FOREVER, Kind, current_period, fmt

__all__ = ["KINDS", "EventKind", "EventQuery", "emit", "search"]

EXPIRY_NOTICE = timedelta(days=30)
"""How long before a purchase expires its `purchase.expiring` event fires."""


class EventKind:
    """The stable names of the event kinds (docs/events.md)."""

    allowance_threshold = "allowance.threshold"
    balance_low = "balance.low"
    organization_over_allocated = "organization.over_allocated"
    purchase_expiring = "purchase.expiring"
    purchase_expired = "purchase.expired"
    period_began = "period.began"
    token_request_made = "token_request.made"
    token_request_decided = "token_request.decided"
    policy_moved = "policy.moved"


KINDS: tuple[str, ...] = get_args(EventKindName)


async def emit(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    kind: str,
    *,
    key: str,
    message: str,
    data: dict[str, Any],
    user_id: uuid.UUID | None = None,
) -> bool:
    """Record the event named by `key` once per organization; True when this call did."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return await repository.insert_once(
        session,
        org_id=org_id,
        user_id=user_id,
        kind=kind,
        key=key[:200],
        data=data,
        message=message,
        created_at=act.now,
    )


async def search(session: AsyncSession, query: EventQuery) -> EventPage:
    """Events of an organization (or of one of its users), newest first."""
    rows, total = await repository.search(session, query)
    return EventPage(
        events=[EventOut.model_validate(row, from_attributes=True) for row in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


MAX_THRESHOLDS = 5


def check_alert_settings(changes: dict[str, Any]) -> None:
    """The alert settings of a policy change (422 naming the field); the thresholds are
    stored sorted."""
    percents = changes.get("alert_thresholds")
    if percents is not None:
        whole = all(isinstance(p, int) and not isinstance(p, bool) for p in percents)
        if not isinstance(percents, list) or not whole or not all(1 <= p <= 100 for p in percents):
            raise InvalidRequest(
                "Alert thresholds are percents of an allowance: whole numbers from 1 to 100.",
                details={"field": "alert_thresholds"},
            )
        if len(percents) > MAX_THRESHOLDS or len(set(percents)) != len(percents):
            raise InvalidRequest(
                f"At most {MAX_THRESHOLDS} alert thresholds, each once"
                f" (got {', '.join(map(str, percents))}).",
                details={"field": "alert_thresholds"},
            )
        changes["alert_thresholds"] = sorted(percents)
    below = changes.get("alert_balance_below_percent")
    if below is not None and (
        isinstance(below, bool) or not isinstance(below, int) or not 0 <= below <= 100
    ):
        raise InvalidRequest(
            "The low-balance alert is a percent of the capacity: a whole number from 0 to 100.",
            details={"field": "alert_balance_below_percent"},
        )


def parse_thresholds(text: str) -> list[int]:
    """Thresholds as typed ("80, 100", "80;100%", "" for none); ValueError when not whole
    numbers. `check_alert_settings` checks their range."""
    parts = [p.strip().rstrip("%").strip() for p in text.replace(";", ",").split(",")]
    try:
        return [int(p) for p in parts if p]
    except ValueError:
        raise ValueError(
            "write the thresholds as whole percents separated by commas, such as 80, 100."
        ) from None


def _day(moment: datetime, org: Organization) -> str:
    local = moment.astimezone(ZoneInfo(org.time_zone))
    return f"{local.day} {local:%B %Y}"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S")


# --- a user's thresholds -----------------------------------------------------------------


def used_now(users: Iterable[User], starts: dict[uuid.UUID, datetime]) -> dict[Any, int]:
    """Each user's use of each kind this period, to compare after a change (`thresholds`)."""
    return {
        (user.id, kind): user.used_in(kind, starts[user.org_id]) for user in users for kind in Kind
    }


def crossed(before: int, after: int, allowance: int, percents: Iterable[int]) -> list[int]:
    """The percents of `allowance` that use passed going from `before` to `after`."""
    if allowance <= 0:
        return []
    return [p for p in percents if before * 100 < p * allowance <= after * 100]


async def thresholds(
    session: AsyncSession,
    act: Act,
    orgs: dict[uuid.UUID, Organization],
    users: Iterable[User],
    starts: dict[uuid.UUID, datetime],
    before: dict[Any, int],
) -> None:
    """The threshold events of the users' use since `before` (`used_now`)."""
    for user in users:
        org = orgs[user.org_id]
        start = starts[user.org_id]
        for kind in Kind:
            after = user.used_in(kind, start)
            was = before.get((user.id, kind), after)
            if after <= was:
                continue
            for percent in crossed(was, after, user.allowance(kind), org.alert_thresholds):
                await threshold_passed(session, act, org, user, kind, percent, start)


class Counted(Protocol):
    """What a threshold event says of a user: a `User`, or the metering engine's row of one."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def email(self) -> str: ...
    @property
    def name(self) -> str: ...
    def allowance(self, kind: Kind) -> int: ...
    def used_in(self, kind: Kind, period_start: datetime) -> int: ...


def threshold_key(user: Counted, kind: Kind, start: datetime, percent: int) -> str:
    return (
        f"{EventKind.allowance_threshold}:{user.id}:{kind.value}:{_stamp(start)}"
        f":{percent}:{user.allowance(kind)}"
    )


async def threshold_passed(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: Counted,
    kind: Kind,
    percent: int,
    start: datetime,
) -> bool:
    return await user_threshold_passed(session, act, org.id, user, kind, percent, start)


async def user_threshold_passed(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    user: Counted,
    kind: Kind,
    percent: int,
    start: datetime,
) -> bool:
    used, allowance = user.used_in(kind, start), user.allowance(kind)
    return await emit(
        session,
        act,
        org_id,
        EventKind.allowance_threshold,
        key=threshold_key(user, kind, start, percent),
        user_id=user.id,
        message=f"{user.name} has used {percent}% of their {ALLOWANCE_LABEL[kind]}"
        f" ({fmt(used)} of {fmt(allowance)}).",
        data={
            "user_id": str(user.id),
            "email": user.email,
            "name": user.name,
            "kind": kind.value,
            "percent": percent,
            "used": used,
            "allowance": allowance,
            "period_start": start.isoformat(),
        },
    )


async def sweep_thresholds(session: AsyncSession, act: Act, org: Organization) -> int:
    """Thresholds passed without a crossing by usage (an allowance lowered under what was
    used): users past a threshold this period with no event of it this period."""
    if not org.alert_thresholds:
        return 0
    start = current_period(org, act.now)
    users = await repository.users_past(session, org.id, start, min(org.alert_thresholds))
    if not users:
        return 0
    told = {
        (data.get("user_id"), data.get("kind"), data.get("percent"))
        for data in await repository.threshold_data(session, org.id, [u.id for u in users], start)
        if data.get("period_start") == start.isoformat()
    }
    fired = 0
    for user in users:
        for kind in Kind:
            used, allowance = user.used_in(kind, start), user.allowance(kind)
            for percent in crossed(-1, used, allowance, org.alert_thresholds):
                if (str(user.id), kind.value, percent) in told:
                    continue
                fired += await threshold_passed(session, act, org, user, kind, percent, start)
    return fired


# --- the organization's balance ----------------------------------------------------------


async def _episode(
    session: AsyncSession, act: Act, org: Organization, subject: str, holds: bool
) -> int | None:
    """The episode number when the condition began now (fire), None otherwise."""
    if holds:
        return await repository.begin_episode(session, org.id, subject, act.now)
    await repository.end_episode(session, org.id, subject, act.now)
    return None


async def balance_alerts(session: AsyncSession, act: Act, org: Organization) -> int:
    """`balance.low` and `organization.over_allocated`, per kind, when they begin."""
    fired = 0
    for kind in Kind:
        capacity, allocated = org.capacity(kind), org.allocated(kind)
        left = capacity - allocated
        figures = {"kind": kind.value, "capacity": capacity, "allocated": allocated}
        percent = org.alert_balance_below_percent
        low = capacity > 0 and left * 100 < percent * capacity
        subject = f"{EventKind.balance_low}:{kind.value}"
        episode = await _episode(session, act, org, subject, low)
        if episode is not None:
            fired += await emit(
                session,
                act,
                org.id,
                EventKind.balance_low,
                key=f"{subject}:{episode}",
                message=f"The {kind.value} token balance is {fmt(left)}, below {percent}% of"
                f" the capacity of {fmt(capacity)}.",
                data={**figures, "balance": left, "below_percent": percent},
            )
        over = allocated > capacity
        subject = f"{EventKind.organization_over_allocated}:{kind.value}"
        episode = await _episode(session, act, org, subject, over)
        if episode is not None:
            fired += await emit(
                session,
                act,
                org.id,
                EventKind.organization_over_allocated,
                key=f"{subject}:{episode}",
                message=f"{org.name} is over-allocated: {fmt(allocated)} {kind.value} tokens"
                f" are allocated against a capacity of {fmt(capacity)}.",
                data={**figures, "shortfall": allocated - capacity},
            )
    return fired


# --- purchases and periods ---------------------------------------------------------------


def _purchase_data(purchase: Purchase) -> dict[str, Any]:
    return {
        "purchase_id": str(purchase.id),
        "inference_amount": purchase.inference_amount,
        "training_amount": purchase.training_amount,
        "expires_at": purchase.expires_at.isoformat() if purchase.expires_at else None,
    }


def _purchase_words(purchase: Purchase) -> str:
    parts = [f"{fmt(purchase.amount(kind))} {kind.value}" for kind in Kind if purchase.amount(kind)]
    return f"A purchase of {' and '.join(parts) or 'no'} tokens"


async def purchase_expiring(
    session: AsyncSession, act: Act, org: Organization, purchase: Purchase
) -> bool:
    assert purchase.expires_at is not None
    return await emit(
        session,
        act,
        org.id,
        EventKind.purchase_expiring,
        key=f"{EventKind.purchase_expiring}:{purchase.id}:{_stamp(purchase.expires_at)}",
        message=f"{_purchase_words(purchase)} expires on {_day(purchase.expires_at, org)}.",
        data=_purchase_data(purchase),
    )


async def purchases_expiring(session: AsyncSession, act: Act, org: Organization) -> int:
    """`purchase.expiring` for each purchase that expires within EXPIRY_NOTICE."""
    fired = 0
    until = act.now + EXPIRY_NOTICE
    for purchase in await repository.purchases_expiring(session, org.id, act.now, until):
        fired += await purchase_expiring(session, act, org, purchase)
    return fired


async def purchase_expired(
    session: AsyncSession, act: Act, org: Organization, purchase: Purchase
) -> bool:
    """A purchase's expiry, recorded (organization.service.bring_up_to_date)."""
    when = purchase.expires_at or act.now
    return await emit(
        session,
        act,
        org.id,
        EventKind.purchase_expired,
        key=f"{EventKind.purchase_expired}:{purchase.id}",
        message=f"{_purchase_words(purchase)} expired on {_day(when, org)}; its tokens left"
        " the capacity.",
        data=_purchase_data(purchase),
    )


async def period_began(
    session: AsyncSession, act: Act, org: Organization, start: datetime, previous: datetime
) -> bool:
    """A new period (organization.service): usage counts from 0 again."""
    if start == FOREVER:
        return False  # the period became `none`: no period begins, usage stops restarting
    return await emit(
        session,
        act,
        org.id,
        EventKind.period_began,
        key=f"{EventKind.period_began}:{_stamp(start)}",
        message=f"A new period began on {_day(start, org)}: usage counts from 0 again.",
        data={"period_start": start.isoformat(), "previous": previous.isoformat()},
    )


# --- token requests ----------------------------------------------------------------------


def _request_data(request: TokenRequest, user: User, act: Act) -> dict[str, Any]:
    data: dict[str, Any] = {
        "request_id": str(request.id),
        "user_id": str(user.id),
        "email": user.email,
        "name": user.name,
        "kind": request.kind,
        "amount": request.amount,
        "state": request.state,
        "by": act.actor,
    }
    if request.approved_amount is not None:
        data["approved_amount"] = request.approved_amount
    return data


async def token_request_made(
    session: AsyncSession, act: Act, org: Organization, request: TokenRequest, user: User
) -> bool:
    label = ALLOWANCE_LABEL[Kind(request.kind)]
    return await emit(
        session,
        act,
        org.id,
        EventKind.token_request_made,
        key=f"{EventKind.token_request_made}:{request.id}",
        user_id=user.id,
        message=f"{user.name} asked for {fmt(request.amount)} more {label}: {request.reason}",
        data=_request_data(request, user, act),
    )


async def token_request_decided(
    session: AsyncSession,
    act: Act,
    org: Organization,
    request: TokenRequest,
    user: User,
    *,
    automatic: bool = False,
) -> bool:
    label = ALLOWANCE_LABEL[Kind(request.kind)]
    asked = f"{fmt(request.amount)} {label}"
    if request.state == "withdrawn":
        message = f"{user.name} withdrew their request for {asked}."
    else:
        # "user:ada@example.com" reads "ada@example.com"; a key reads by its name.
        who = "The auto-approval rule" if automatic else act.actor.split(":", 1)[-1]
        message = f"{who} {request.state} {user.name}'s request for {asked}"
        granted = request.approved_amount
        if granted is not None and granted != request.amount:
            message += f", granting {fmt(granted)}"
        message += f": {request.note}" if request.note else "."
    return await emit(
        session,
        act,
        org.id,
        EventKind.token_request_decided,
        key=f"{EventKind.token_request_decided}:{request.id}",
        user_id=user.id,
        message=message,
        data=_request_data(request, user, act),
    )
