from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, EmailStr, Field

from tokenadmin.schemas import Amount, Answer, Input, Name, Text, WholeNumber, columns_of
from tokenadmin.tokens import Kind, current_period, current_period_end

if TYPE_CHECKING:
    from tokenadmin.models import Organization, User
    from tokenadmin.usage.service import KindAvailability

Role = Literal["admin", "member"]
Status = Literal["active", "deactivated"]
SortField = Literal[
    "name",
    "email",
    "role",
    "status",
    "max_tokens",
    "inference_used",
    "max_train_tokens",
    "training_used",
    "last_activity_at",
    "created_at",
]


class UserCreate(Input):
    email: EmailStr
    name: Name
    role: Role = "member"
    max_tokens: Amount | None = Field(
        default=None, description="Defaults to the organization's inference minimum."
    )
    max_train_tokens: Amount | None = Field(
        default=None, description="Defaults to the organization's training minimum."
    )
    password: str | None = Field(default=None, min_length=10, max_length=200)


class UserUpdate(Input):
    name: Name | None = None
    role: Role | None = None
    max_tokens: Amount | None = None
    max_train_tokens: Amount | None = None
    expected_version: WholeNumber | None = Field(
        default=None, description="The version you saw; refused with version_conflict if changed."
    )
    reason: Text | None = Field(default=None, max_length=500)


class Reactivate(Input):
    max_tokens: Amount | None = None
    max_train_tokens: Amount | None = None


class KindUsage(BaseModel):
    used: int
    reserved: int
    remaining: int


class UserOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    email: str
    name: str
    role: Role
    status: Status
    max_tokens: int
    max_train_tokens: int
    inference: KindUsage
    training: KindUsage
    version: int
    last_activity_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, user: User, period_start: datetime) -> UserOut:
        def usage(kind: Kind) -> KindUsage:
            return KindUsage(
                used=user.used_in(kind, period_start),
                reserved=user.reserved(kind),
                remaining=user.remaining(kind, period_start),
            )

        return cls(
            **columns_of(cls, user, "inference", "training"),
            inference=usage(Kind.inference),
            training=usage(Kind.training),
        )


class UserListQuery(BaseModel):
    """What a page of the user table shows: search, filters, sort and page."""

    search: Text | None = Field(default=None, max_length=200)
    status: Status | None = None
    role: Role | None = None
    near_limit: float | None = Field(
        default=None, gt=0, le=1, description="Only users who used this share or more."
    )
    sort: SortField = "name"
    order: Literal["asc", "desc"] = "asc"
    limit: int = Field(default=50, ge=1, le=10_000)
    offset: int = Field(default=0, ge=0, le=10_000_000)


class UserListParams(UserListQuery):
    """The query parameters of GET /v1/organizations/{org_id}/users: at most 500 a page."""

    limit: int = Field(default=50, ge=1, le=500)


class UserPage(BaseModel):
    users: list[UserOut]
    total: int
    limit: int
    offset: int


class KindBalance(Answer):
    allowance: int
    used: int
    reserved: int
    remaining: int = Field(description="allowance − used − reserved")
    organization_remaining: int | None = Field(
        description="What the organization's capacity leaves, when it binds (SPEC rule 3);"
        " null when the organization is not over-allocated and so cannot bind."
    )
    available: int = Field(description="min(remaining, organization_remaining): what may be used.")


class UserBalanceOut(BaseModel):
    user_id: uuid.UUID
    email: str
    status: str
    period_start: datetime | None
    period_end: datetime | None
    inference: KindBalance
    training: KindBalance

    @classmethod
    def of(
        cls,
        user: User,
        org: Organization,
        kinds: dict[Kind, KindAvailability],
        now: datetime,
    ) -> UserBalanceOut:
        out = {kind: KindBalance.of(a) for kind, a in kinds.items()}
        return cls(
            user_id=user.id,
            email=user.email,
            status=user.status,
            period_start=None if org.period == "none" else current_period(org, now),
            period_end=current_period_end(org, now),
            inference=out[Kind.inference],
            training=out[Kind.training],
        )


class UsagePoint(BaseModel):
    start: datetime
    inference: int
    training: int


class UsageHistoryOut(BaseModel):
    user_id: uuid.UUID
    granularity: Literal["day", "month"]
    points: list[UsagePoint]
