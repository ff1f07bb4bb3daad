from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import TYPE_CHECKING, Annotated, Literal, get_args

from pydantic import BaseModel, Field, StrictBool, StrictInt, field_validator, model_validator

from tokenadmin.auth.principal import SCOPES
from tokenadmin.schemas import (
    WHOLE,
    WITHIN_THE_CALENDAR,
    Amount,
    Answer,
    Input,
    Name,
    Text,
    written_out,
)
from tokenadmin.tokens import DEFAULT_MINIMUM, Kind, Period

if TYPE_CHECKING:
    from tokenadmin.organization.service import Balance

Expiry = Annotated[datetime, written_out("2027-01-01 or 2027-01-01T00:00:00Z"), WITHIN_THE_CALENDAR]
"""An expiry: ISO 8601 text, a time or a date; without an offset it is read in the
organization's time zone (organization.endpoints), as the CLI and the dashboard read it."""

Day = Annotated[date, written_out("2027-01-01")]
PerPeriod = Annotated[StrictInt, Field(ge=0, le=10_000), WHOLE]
Percent = Annotated[StrictInt, Field(ge=0, le=100), WHOLE]


class OrganizationCreate(Input):
    name: Name
    time_zone: str = Field(default="UTC", max_length=64, examples=["Europe/Berlin"])
    period: Period = Period.monthly
    min_inference: Amount = DEFAULT_MINIMUM[Kind.inference]
    min_training: Amount = DEFAULT_MINIMUM[Kind.training]
    overallocation: StrictBool = False


class OrganizationUpdate(Input):
    name: Name | None = None
    time_zone: str | None = Field(default=None, max_length=64)
    period: Period | None = None
    min_inference: Amount | None = None
    min_training: Amount | None = None
    overallocation: StrictBool | None = None
    auto_approve_enabled: StrictBool | None = Field(
        default=None, description="Whether token requests within the rule are approved at once."
    )
    auto_approve_max_amount: Amount | None = Field(
        default=None, description="The largest request (tokens of either kind) approved at once."
    )
    auto_approve_max_per_period: PerPeriod | None = Field(
        default=None, description="How many requests of one user are approved at once per period."
    )
    auto_approve_max_allocated_percent: Percent | None = Field(
        default=None,
        description="Nothing is approved at once when the kind's allocated share of the"
        " capacity would be above this percent after the grant.",
    )
    alert_thresholds: list[Annotated[StrictInt, WHOLE]] | None = Field(
        default=None,
        description="The percents of an allowance whose passing is an event"
        " (allowance.threshold): at most 5 whole numbers from 1 to 100, e.g. [80, 100].",
    )
    alert_balance_below_percent: Percent | None = Field(
        default=None,
        description="A kind's balance below this percent of its capacity is an event"
        " (balance.low); 0 turns it off.",
    )

    @model_validator(mode="after")
    def _null_keeps_a_setting(self) -> OrganizationUpdate:
        # null leaves a setting as it is, as leaving it out does: the change is made of the
        # fields that were set (a null time zone reached the zone lookup: a 500).
        for name in [n for n in self.model_fields_set if getattr(self, n) is None]:
            self.model_fields_set.discard(name)
        return self


class OrganizationOut(Answer):
    id: uuid.UUID
    name: str
    time_zone: str
    period: Period
    min_inference: int
    min_training: int
    overallocation: bool
    auto_approve_enabled: bool
    auto_approve_max_amount: int
    auto_approve_max_per_period: int
    auto_approve_max_allocated_percent: int
    alert_thresholds: list[int]
    alert_balance_below_percent: int
    version: int
    created_at: datetime


class PurchaseCreate(Input):
    inference_amount: Amount = 0
    training_amount: Amount = 0
    purchased_on: Day | None = None
    expires_at: Expiry | None = Field(
        default=None,
        description="When the purchase stops counting: ISO 8601 text, a time or a date. A"
        " date or a time without an offset is read in the organization's time zone.",
    )
    payer: Text = Field(default="", max_length=200)
    note: Text = Field(default="", max_length=2000)


class PurchaseUpdate(Input):
    expires_at: Expiry | None


class PurchaseOut(Answer):
    id: uuid.UUID
    inference_amount: int
    training_amount: int
    purchased_on: date
    expires_at: datetime | None
    expired: bool
    payer: str
    note: str
    created_at: datetime


class KindBalanceOut(Answer):
    capacity: int
    allocated: int
    balance: int = Field(description="capacity − allocated: what is left to hand out.")
    shortfall: int = Field(description="How far allocated exceeds capacity (0 when it doesn't).")
    used: int
    reserved: int


class BalanceOut(BaseModel):
    organization_id: uuid.UUID
    period_start: datetime | None
    period_end: datetime | None
    inference: KindBalanceOut
    training: KindBalanceOut
    over_allocated: bool
    expiring_purchases: list[PurchaseOut]

    @classmethod
    def of(cls, balance: Balance) -> BalanceOut:
        kinds = {kind.value: KindBalanceOut.of(b) for kind, b in balance.kinds.items()}
        return cls(
            organization_id=balance.org.id,
            period_start=balance.period_start,
            period_end=balance.period_end,
            inference=kinds["inference"],
            training=kinds["training"],
            over_allocated=any(b.shortfall for b in balance.kinds.values()),
            expiring_purchases=[PurchaseOut.of(p) for p in balance.expiring],
        )


Scope = Literal["admin", "usage", "read"]
assert get_args(Scope) == SCOPES, "the OpenAPI lists the scopes a key may have"


class ApiKeyCreate(Input):
    name: Name
    scopes: list[Scope] = Field(min_length=1, examples=[["usage"]])


class ApiKeyOut(Answer):
    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None

    @field_validator("scopes", mode="before")
    @classmethod
    def _stored_scopes(cls, scopes: object) -> object:
        """A key's scopes are stored as one space-separated text."""
        return scopes.split() if isinstance(scopes, str) else scopes


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself. It is shown only this once.")
