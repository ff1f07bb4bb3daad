"""Forecasts and usage reports, for the API, the dashboard, the CLI and the client alike.

A forecast says when a user's remaining allowance (or an organization's capacity less its
usage) reaches 0 at the pace of this period so far (without periods: of the last 30 days),
with what it rests on: the window measured, the tokens used in it and on how many days, so
a caller can tell a forecast from too little data. A usage report sums a user's or an
organization's usage per day or per month of the organization's time zone, per kind and,
if asked, per model, over a bounded range.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.errors import InvalidRequest, ReportRangeRefused
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import Balance
from tokenadmin.report import repository
from tokenadmin.tokens import Kind, Period, current_period, current_period_end

Granularity = Literal["day", "month"]

PACE_WINDOW = timedelta(days=30)
"""Without periods (prepaid), the pace is that of the last 30 days."""
HORIZON = timedelta(days=3650)
"""Without periods, a forecast further than ten years away is no forecast."""
HORIZON_SECONDS = int(HORIZON.total_seconds())
DAY_SECONDS = 86_400

PREPAID_DAYS = 31
"""Without periods, a report per day covers the 31 days before `until` by default."""
MAX_DAYS = 366
"""A report per day spans at most this many days."""
MAX_MONTHS = 120
"""A report per month spans at most this many months (ten years)."""
MAX_ROWS = 100_000
"""A report per model holds at most this many rows."""
EARLIEST, LATEST = date(1970, 1, 1), date(9998, 12, 31)
"""The days a report may name."""
MAX_USERS = 1_000
"""An organization's forecast lists at most this many users at a time."""


# --- the arithmetic of a forecast ----------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """When `remaining` reaches 0 at the current pace."""

    pace_per_day: int
    runs_out_on: datetime | None
    """None: no usage to make a pace of, or not before the period ends."""


def forecast(
    used: int, elapsed: timedelta, remaining: int, now: datetime, end: datetime | None
) -> Forecast:
    """`used` tokens over `elapsed` make the pace; at that pace `remaining` reaches 0 when?

    A user's forecast passes their remaining allowance; the organization's passes its
    capacity less its usage. Reaching 0 exactly at `end` (or beyond `HORIZON`) counts as
    not running out.
    """
    seconds = int(elapsed.total_seconds())
    if used <= 0 or seconds <= 0:
        return Forecast(0, None)
    pace_per_day = used * DAY_SECONDS // seconds
    # Integer arithmetic: remaining / (used / seconds) seconds from now.
    delay = timedelta(seconds=min(max(0, remaining) * seconds // used, HORIZON_SECONDS))
    runs_out = now + delay
    if delay >= HORIZON or (end is not None and runs_out >= end):
        return Forecast(pace_per_day, None)
    return Forecast(pace_per_day, runs_out)


def pace_since(org: Organization, now: datetime) -> datetime:
    """Where the pace is measured from: the start of the period, or 30 days ago."""
    return now - PACE_WINDOW if org.period == Period.none else current_period(org, now)


# --- forecasts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """What a forecast measured: usage from `measured_from` to `measured_until` (now)."""

    measured_from: datetime
    measured_until: datetime
    period_end: datetime | None
    """When the period ends (None without periods): running out after it is not running out."""

    @property
    def seconds_observed(self) -> int:
        return max(0, int((self.measured_until - self.measured_from).total_seconds()))

    @property
    def days_observed(self) -> int:
        """Whole days measured: 0 on the first day of a period."""
        return self.seconds_observed // DAY_SECONDS

    @property
    def hours_observed(self) -> int:
        """Whole hours measured."""
        return self.seconds_observed // 3600

    @property
    def too_short(self) -> bool:
        """Under a day measured: the pace stretches a few hours of use to a day, too little
        to be sure of."""
        return self.seconds_observed < DAY_SECONDS


def _count(number: int, unit: str) -> str:
    return f"{number:,} {unit}{'' if number == 1 else 's'}"


def basis(window: Window, used: int, days_with_usage: int | None) -> str:
    """What a forecast rests on, in words: "Based on 9 days of this period, with usage on 3
    days.", or under a day "Based on 5 hours of this period — too little to be sure."."""
    if window.too_short:
        hours = window.hours_observed
        span = f"{_count(hours, 'hour') if hours else 'under an hour'} of this period"
    elif window.period_end is None:
        span = f"the last {_count(window.days_observed, 'day')}"
    else:
        span = f"{_count(window.days_observed, 'day')} of this period"
    if used <= 0:
        return f"No usage in {span}."
    if window.too_short:
        return f"Based on {span} — too little to be sure."
    if days_with_usage is None:
        return f"Based on {span}."
    return f"Based on {span}, with usage on {_count(days_with_usage, 'day')}."


@dataclass(frozen=True)
class KindForecast:
    """One kind's forecast and the figures it rests on."""

    remaining: int
    """What is left: the user's remaining allowance, or the capacity less the usage."""
    used: int
    """Tokens used in the window: the pace is `used` over the window's length."""
    pace_per_day: int
    runs_out_on: datetime | None
    """None: no usage to make a pace of, or not running out before the period ends (ten
    years without periods), or a deactivated user."""
    days_with_usage: int | None = None
    """Days of the window (in the organization's zone) with usage of this kind; None in an
    organization's list of users, which does not count them."""
    basis: str = ""
    """What the forecast rests on, in words (see `basis`)."""
    too_little_data: bool = False
    """The window is under a day: the pace stretches hours of use to a day."""


@dataclass(frozen=True)
class UserForecast:
    user: User
    window: Window
    kinds: dict[Kind, KindForecast]

    @property
    def soonest(self) -> datetime | None:
        dates = [k.runs_out_on for k in self.kinds.values() if k.runs_out_on is not None]
        return min(dates) if dates else None


@dataclass(frozen=True)
class OrgForecast:
    org: Organization
    window: Window
    kinds: dict[Kind, KindForecast]
    users: list[UserForecast] = field(default_factory=list)
    """The users asked for, who run out soonest first."""
    users_total: int = 0
    """Active users with usage in the window: those who have a pace (the others never run
    out). Counted only when users are asked for."""


def _window(org: Organization, now: datetime) -> Window:
    return Window(pace_since(org, now), now, current_period_end(org, now))


def _kind_forecast(
    window: Window, used: int, remaining: int, days: int | None = None, *, may_use: bool = True
) -> KindForecast:
    elapsed = window.measured_until - window.measured_from
    result = forecast(used, elapsed, remaining, window.measured_until, window.period_end)
    runs_out_on = result.runs_out_on if may_use else None
    return KindForecast(
        remaining,
        used,
        result.pace_per_day,
        runs_out_on,
        days,
        basis(window, used, days),
        window.too_short and used > 0,
    )


def _day_edges(zone: ZoneInfo, since: datetime, until: datetime) -> list[datetime]:
    """`since`, then every local midnight after it up to `until`: the days of a window."""
    edges = [since]
    day = since.astimezone(zone).date() + timedelta(days=1)
    while (midnight := _midnight(day, zone)) <= until:
        edges.append(midnight)
        day += timedelta(days=1)
    return edges


async def _paced(
    session: AsyncSession, org: Organization, window: Window, user_id: uuid.UUID | None
) -> tuple[dict[Kind, int], dict[Kind, int]]:
    """Tokens used in the window and the number of days with usage, per kind."""
    edges = _day_edges(ZoneInfo(org.time_zone), window.measured_from, window.measured_until)
    rows = await repository.usage_per_bucket(session, org.id, edges, until=None, user_id=user_id)
    used = {kind: 0 for kind in Kind}
    days: dict[Kind, set[int]] = {kind: set() for kind in Kind}
    for index, kind, _, tokens in rows:
        used[Kind(kind)] += tokens
        if tokens:
            days[Kind(kind)].add(index)
    return used, {kind: len(days[kind]) for kind in Kind}


async def user_forecast(
    session: AsyncSession, org: Organization, user: User, now: datetime
) -> UserForecast:
    """When a user runs out of each kind at their pace, from the journal's usage entries.
    A deactivated user has nothing left and runs out of nothing."""
    window = _window(org, now)
    used, days = await _paced(session, org, window, user.id)
    start = current_period(org, now)
    kinds = {
        kind: _kind_forecast(
            window,
            used[kind],
            user.remaining(kind, start) if user.active else 0,
            days[kind],
            may_use=user.active,
        )
        for kind in Kind
    }
    return UserForecast(user, window, kinds)


async def org_forecast(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    balance: Balance | None = None,
    users: int = 0,
    offset: int = 0,
    count_days: bool = True,
) -> OrgForecast:
    """When the organization uses up its capacity of each kind at its pace and, with
    `users`, that many of its active users from `offset` on, who run out soonest first (users
    who never run out by the ordering of their remaining over their pace, then by email).
    `balance` may be one the caller already has (the dashboard's, up to a few seconds old).

    Without `count_days`, a monthly organization's pace is the period's usage its balance
    already holds, and the days with usage are not counted: no read of the period's
    journal, which a busy organization's page could not afford on every view."""
    if balance is None:
        balance = await organization_service.balance(session, org, now)
    window = _window(org, now)
    if count_days or org.period == Period.none:
        used, days = await _paced(session, org, window, None)
        counted: dict[Kind, int | None] = dict(days)
    else:
        used = {kind: b.used for kind, b in balance.kinds.items()}
        counted = {kind: None for kind in Kind}
    kinds = {
        kind: _kind_forecast(window, used[kind], b.capacity - b.used, counted[kind])
        for kind, b in balance.kinds.items()
    }
    if users <= 0:
        return OrgForecast(org, window, kinds)
    per_user: dict[uuid.UUID, tuple[User, dict[Kind, int]]] = {}
    for user, kind, tokens in await repository.usage_per_user(
        session, org.id, window.measured_from
    ):
        per_user.setdefault(user.id, (user, {k: 0 for k in Kind}))[1][Kind(kind)] += tokens
    start = current_period(org, now)
    forecasts = [
        UserForecast(
            user,
            window,
            {
                kind: _kind_forecast(window, sums[kind], user.remaining(kind, start))
                for kind in Kind
            },
        )
        for user, sums in per_user.values()
    ]
    forecasts.sort(key=_soonest_first)
    return OrgForecast(org, window, kinds, forecasts[offset : offset + users], len(forecasts))


def _soonest_first(item: UserForecast) -> tuple[int, datetime, float, str]:
    soonest = item.soonest
    if soonest is not None:
        return (0, soonest, 0.0, item.user.email)
    # Not running out: who would first, were the period longer.
    left = min(
        (max(0, k.remaining) / k.used for k in item.kinds.values() if k.used > 0),
        default=float("inf"),
    )
    return (1, item.window.measured_until, left, item.user.email)


# --- usage reports ------------------------------------------------------------------------


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone)


def _next_month(day: date) -> date:
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


@dataclass(frozen=True)
class UsageRow:
    start: datetime
    """The day's or month's first moment, in the organization's zone."""
    model: str | None
    """With `by_model`: the model the caller named (None: named none)."""
    tokens: dict[Kind, int]


@dataclass(frozen=True)
class UsageReport:
    """Usage per day or per month of `first` to `last` (both included, in the organization's
    zone). Without `by_model`, one row a day or month, usage or not; with it, one row a day
    or month and model that has usage."""

    org: Organization
    user: User | None
    granularity: Granularity
    first: date
    last: date
    by_model: bool
    buckets: list[datetime]
    rows: list[UsageRow]

    @property
    def totals(self) -> dict[Kind, int]:
        return {kind: sum(row.tokens[kind] for row in self.rows) for kind in Kind}

    def label(self, start: datetime) -> str:
        return start.strftime("%Y-%m-%d" if self.granularity == "day" else "%Y-%m")

    def series(self, kind: Kind) -> list[int]:
        """Usage of one kind per bucket, every model together: what a chart draws."""
        sums: dict[datetime, int] = defaultdict(int)
        for row in self.rows:
            sums[row.start] += row.tokens[kind]
        return [sums[start] for start in self.buckets]

    def csv(self) -> str:
        """date (YYYY-MM-DD or YYYY-MM), model (with `by_model`), inference, training."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        model = ["model"] if self.by_model else []
        writer.writerow(["date", *model, *(kind.value for kind in Kind)])
        for row in self.rows:
            named = [row.model or ""] if self.by_model else []
            writer.writerow([self.label(row.start), *named, *(row.tokens[k] for k in Kind)])
        return buffer.getvalue()

    @property
    def csv_filename(self) -> str:
        who = self.user.email.split("@")[0] if self.user is not None else self.org.name
        name = f"usage-per-{self.granularity}-{who}.csv"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def report_range(
    org: Organization,
    now: datetime,
    granularity: Granularity,
    first: date | None = None,
    last: date | None = None,
) -> tuple[date, date]:
    """The days a report covers, both included. `last` defaults to today in the
    organization's zone; `first` to the first day of `last`'s month (without periods, the 31
    days before `last`) per day, or the same month a year before per month. A report per
    month covers whole months. Refused: a range that ends before it begins, or longer than
    `MAX_DAYS` days or `MAX_MONTHS` months."""
    for name, day in (("from", first), ("until", last)):
        if day is not None and not EARLIEST <= day <= LATEST:
            raise InvalidRequest(
                f"{name}: {day} is out of range; reports cover {EARLIEST} to {LATEST}.",
                details={"field": name},
            )
    if last is None:
        last = now.astimezone(ZoneInfo(org.time_zone)).date()
    if first is None:
        if granularity == "month":
            first = date(last.year - 1, last.month, 1)
        elif org.period == Period.none:
            first = last - timedelta(days=PREPAID_DAYS)
        else:
            first = last.replace(day=1)
    if granularity == "month":
        first, last = first.replace(day=1), _next_month(last) - timedelta(days=1)
    if last < first:
        raise ReportRangeRefused(
            f"The report would end ({last}) before it begins ({first}).",
            code="report_range_reversed",
            details={"from": first.isoformat(), "until": last.isoformat()},
        )
    if granularity == "day" and (last - first).days + 1 > MAX_DAYS:
        raise ReportRangeRefused(
            f"A report per day spans at most {MAX_DAYS} days; {first} to {last} is"
            f" {(last - first).days + 1}. Ask for a shorter range or a report per month.",
            details={"granularity": granularity, "max_days": MAX_DAYS},
        )
    months = (last.year - first.year) * 12 + last.month - first.month + 1
    if granularity == "month" and months > MAX_MONTHS:
        raise ReportRangeRefused(
            f"A report per month spans at most {MAX_MONTHS} months; {first:%Y-%m} to"
            f" {last:%Y-%m} is {months}. Ask for a shorter range.",
            details={"granularity": granularity, "max_months": MAX_MONTHS},
        )
    return first, last


def _buckets(first: date, last: date, granularity: Granularity) -> list[date]:
    days: list[date] = []
    day = first
    while day <= last:
        days.append(day)
        day = day + timedelta(days=1) if granularity == "day" else _next_month(day)
    return days


async def usage_report(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    granularity: Granularity = "day",
    first: date | None = None,
    last: date | None = None,
    user: User | None = None,
    by_model: bool = False,
) -> UsageReport:
    """An organization's usage (or one of its users') per day or month; see `report_range`
    for the range and its defaults."""
    first, last = report_range(org, now, granularity, first, last)
    zone = ZoneInfo(org.time_zone)
    days = _buckets(first, last, granularity)
    after = last + timedelta(days=1) if granularity == "day" else _next_month(last)
    starts = [_midnight(day, zone) for day in days]
    rows = await repository.usage_per_bucket(
        session,
        org.id,
        starts,
        until=_midnight(after, zone),
        user_id=None if user is None else user.id,
        by_model=by_model,
        limit=MAX_ROWS * len(Kind) + 1,
    )
    sums: dict[tuple[int, str | None], dict[Kind, int]] = {}
    if not by_model:
        sums = {(index, None): {kind: 0 for kind in Kind} for index in range(len(starts))}
    for index, kind, model, tokens in rows:
        sums.setdefault((index, model), {k: 0 for k in Kind})[Kind(kind)] += tokens
    if len(rows) > MAX_ROWS * len(Kind) or len(sums) > MAX_ROWS:
        raise ReportRangeRefused(
            f"This report would hold more than {MAX_ROWS:,} rows; ask for a shorter range or"
            " a report per month.",
            code="report_too_large",
            details={"max_rows": MAX_ROWS},
        )
    ordered = sorted(sums, key=lambda k: (k[0], k[1] is not None, k[1] or ""))
    report = [UsageRow(starts[index], model, sums[index, model]) for index, model in ordered]
    return UsageReport(org, user, granularity, first, last, by_model, starts, report)


# --- the charts' recent usage -------------------------------------------------------------

RECENT_DAYS = 30
"""The charts per day cover today and the 29 days before, whatever the period."""
RECENT_MONTHS = 12
"""The charts per month cover this month and the 11 before."""


def recent_range(org: Organization, now: datetime, granularity: Granularity) -> tuple[date, date]:
    """The days the charts cover: the last 30 days, or the last 12 months (this one
    included), in the organization's zone."""
    today = now.astimezone(ZoneInfo(org.time_zone)).date()
    if granularity == "day":
        return today - timedelta(days=RECENT_DAYS - 1), today
    months = today.year * 12 + today.month - 1 - (RECENT_MONTHS - 1)
    return date(months // 12, months % 12 + 1, 1), today


@dataclass(frozen=True)
class ModelTotal:
    model: str | None
    """None: usage recorded without naming a model."""
    tokens: dict[Kind, int]


@dataclass(frozen=True)
class RecentUsage:
    """What a user's charts draw: usage per day of the last 30 days (per model) and per
    month of the last 12 months, every day and month present, zero or not."""

    daily: UsageReport
    monthly: UsageReport

    @property
    def models(self) -> list[ModelTotal]:
        """Usage of the last 30 days per model, most used first (usage without a model
        last); empty when no usage named a model."""
        sums: dict[str | None, dict[Kind, int]] = {}
        for row in self.daily.rows:
            totals = sums.setdefault(row.model, {kind: 0 for kind in Kind})
            for kind in Kind:
                totals[kind] += row.tokens[kind]
        if all(model is None for model in sums):
            return []
        found = [ModelTotal(model, tokens) for model, tokens in sums.items()]
        found.sort(key=lambda t: (t.model is None, -sum(t.tokens.values()), t.model or ""))
        return found


async def recent_usage(
    session: AsyncSession, org: Organization, now: datetime, user: User | None = None
) -> RecentUsage:
    """An organization's (or one user's) usage of the last 30 days and 12 months."""
    first_day, today = recent_range(org, now, "day")
    daily = await usage_report(
        session, org, now, first=first_day, last=today, user=user, by_model=True
    )
    first_month, _ = recent_range(org, now, "month")
    monthly = await usage_report(
        session, org, now, granularity="month", first=first_month, last=today, user=user
    )
    return RecentUsage(daily, monthly)
