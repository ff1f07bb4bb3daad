"""Answers of the forecast and usage report routes (GET only: no request bodies)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokenadmin.schemas import Answer
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    from tokenadmin.report.service import (
        KindForecast,
        OrgForecast,
        UsageReport,
        UserForecast,
        Window,
    )


class KindForecastOut(Answer):
    model_config = ConfigDict(use_attribute_docstrings=True)

    remaining: int
    """What is left: the user's remaining allowance, or the organization's capacity less its
    usage this period."""
    used: int
    """Tokens used from measured_from to measured_until: what makes the pace."""
    pace_per_day: int
    """used over the window's length, per day (rounded down)."""
    runs_out_on: datetime | None
    """When remaining reaches 0 at this pace; null: no usage, not before the period ends (ten
    years without periods), or a deactivated user."""
    days_with_usage: int | None
    """Days of the window (in the organization's time zone) with usage of this kind; null in
    an organization's list of users."""
    basis: str
    """What the forecast rests on, in words: e.g. "Based on 9 days of this period, with usage
    on 3 days." or, under a day, "Based on 5 hours of this period — too little to be
    sure." """
    too_little_data: bool
    """True when the pace rests on under a day of usage (the window is shorter than a day):
    a date from it is a guess."""


class WindowOut(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)

    measured_from: datetime
    """Where the pace is measured from: the period's start, or 30 days ago without periods."""
    measured_until: datetime
    """Now."""
    days_observed: int
    """Whole days from measured_from to measured_until: 0 on a period's first day."""
    hours_observed: int
    """Whole hours from measured_from to measured_until."""
    period_end: datetime | None
    """When the period ends; null without periods."""


def _forecast_fields(window: Window, kinds: dict[Kind, KindForecast]) -> dict[str, Any]:
    return {
        "measured_from": window.measured_from,
        "measured_until": window.measured_until,
        "days_observed": window.days_observed,
        "hours_observed": window.hours_observed,
        "period_end": window.period_end,
        **{kind.value: KindForecastOut.of(forecast) for kind, forecast in kinds.items()},
    }


class ListedUserForecast(BaseModel):
    user_id: uuid.UUID
    email: str
    runs_out_on: datetime | None = Field(description="The sooner of the two kinds' dates.")
    inference: KindForecastOut
    training: KindForecastOut

    @classmethod
    def of(cls, forecast: UserForecast) -> ListedUserForecast:
        return cls.model_validate(_user_fields(forecast))


class UserForecastOut(WindowOut):
    user_id: uuid.UUID
    email: str
    status: str
    inference: KindForecastOut
    training: KindForecastOut

    @classmethod
    def of(cls, forecast: UserForecast) -> UserForecastOut:
        fields = _user_fields(forecast) | _forecast_fields(forecast.window, forecast.kinds)
        return cls.model_validate(fields)


def _user_fields(forecast: UserForecast) -> dict[str, Any]:
    """The user's part of a forecast (the answer's models leave out what they don't have)."""
    user = forecast.user
    kinds = {kind.value: KindForecastOut.of(f) for kind, f in forecast.kinds.items()}
    soonest = forecast.soonest
    return {
        "user_id": user.id,
        "email": user.email,
        "status": user.status,
        "runs_out_on": soonest,
        **kinds,
    }


class OrgForecastOut(WindowOut):
    org_id: uuid.UUID
    inference: KindForecastOut
    training: KindForecastOut
    users: list[ListedUserForecast] = Field(
        description="With ?users=N: N active users from ?offset, who run out soonest first."
    )
    users_total: int = Field(
        description="Active users with usage in the window (0 unless users were asked for)."
    )

    @classmethod
    def of(cls, forecast: OrgForecast) -> OrgForecastOut:
        return cls.model_validate(
            {
                "org_id": forecast.org.id,
                "users": [ListedUserForecast.of(u) for u in forecast.users],
                "users_total": forecast.users_total,
                **_forecast_fields(forecast.window, forecast.kinds),
            }
        )


class UsageRowOut(BaseModel):
    date: str = Field(description="The day (YYYY-MM-DD) or month (YYYY-MM).")
    start: datetime = Field(description="Its first moment, in the organization's time zone.")
    model: str | None = Field(
        default=None, description="With group_by=model: the model named (null: none)."
    )
    inference: int
    training: int


class UsageReportOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    org_id: uuid.UUID
    user_id: uuid.UUID | None
    email: str | None
    time_zone: str
    granularity: Literal["day", "month"]
    from_: date = Field(alias="from", description="First day covered.")
    until: date = Field(description="Last day covered (included).")
    group_by: Literal["model"] | None
    rows: list[UsageRowOut]
    totals: dict[Kind, int]

    @classmethod
    def of(cls, report: UsageReport) -> UsageReportOut:
        return cls(
            org_id=report.org.id,
            user_id=None if report.user is None else report.user.id,
            email=None if report.user is None else report.user.email,
            time_zone=report.org.time_zone,
            granularity=report.granularity,
            from_=report.first,
            until=report.last,
            group_by="model" if report.by_model else None,
            rows=[
                UsageRowOut(
                    date=report.label(row.start),
                    start=row.start,
                    model=row.model,
                    inference=row.tokens[Kind.inference],
                    training=row.tokens[Kind.training],
                )
                for row in report.rows
            ],
            totals=report.totals,
        )
