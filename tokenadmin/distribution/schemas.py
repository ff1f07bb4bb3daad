"""Distributing the balance: what a caller asks for and what it is answered.

Imported by the Python client too: pydantic, the standard library and tokenadmin.schemas
only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, model_validator

from tokenadmin.schemas import (
    WHOLE,
    Amount,
    Input,
    PositiveAmount,
    PreviewToken,
    Text,
    one_of_required,
)
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind

Method = Literal["equal", "fixed", "percent"]
Percent = Annotated[StrictInt, Field(ge=1, le=100, description="1 to 100."), WHOLE]


class KindRule(Input):
    """How much each chosen user gets of one kind, added to their allowance."""

    method: Method = Field(
        description="`equal`: the balance split equally (the remainder stays in the balance);"
        " `fixed`: `amount` to each user; `percent`: `percent` of the balance, split equally."
    )
    amount: PositiveAmount | None = Field(default=None, description="With `fixed` only.")
    percent: Percent | None = Field(default=None, description="With `percent` only.")
    minimum: Amount = Field(default=0, description="The least added to each user.")
    maximum: Amount | None = Field(default=None, description="The most added to each user.")

    @model_validator(mode="after")
    def _consistent(self) -> KindRule:
        if self.method == "fixed" and self.amount is None:
            raise ValueError("method fixed needs an amount")
        if self.method != "fixed" and self.amount is not None:
            raise ValueError("amount goes with method fixed only")
        if self.method == "percent" and self.percent is None:
            raise ValueError("method percent needs a percent (1 to 100)")
        if self.method != "percent" and self.percent is not None:
            raise ValueError("percent goes with method percent only")
        if self.maximum is not None and self.maximum < self.minimum:
            raise ValueError("the maximum is below the minimum")
        return self


class DistributionRequest(Input):
    """What to distribute, of one kind or both, to whom."""

    inference: KindRule | None = Field(
        default=None, description=f"Added to {ALLOWANCE_LABEL[Kind.inference]}."
    )
    training: KindRule | None = Field(
        default=None, description=f"Added to {ALLOWANCE_LABEL[Kind.training]}."
    )
    users: list[Annotated[Text, Field(min_length=1, max_length=320)]] | None = Field(
        default=None,
        min_length=1,
        max_length=100_000,
        description="User ids or emails; left out, every active user of the organization.",
    )
    reason: Text | None = Field(default=None, max_length=500, description="For the journal.")
    _a_kind = one_of_required("inference", "training", message="give inference, training or both")


class DistributionApply(DistributionRequest):
    """A distribution to apply; with `preview_token`, only if nothing changed since that
    preview (else 409 preview_stale); without, as computed now."""

    preview_token: PreviewToken | None = None


class DistributionRow(BaseModel):
    user_id: str
    email: str
    before: int
    after: int


class KindDistribution(BaseModel):
    kind: str
    field: str
    method: Method
    per_user: int
    """Added to each user's allowance."""
    added: int
    """Added in all: `per_user` times the users whose allowance changes."""
    balance_before: int
    balance_after: int
    rows: list[DistributionRow]
    """The users whose allowance changes, with their allowance before and after."""


class ExpiringPurchase(BaseModel):
    """A purchase that expires soon (within 30 days, or before the current period ends) and
    funds part of this distribution: once it expires, the organization would have allocated
    more of this kind than its capacity."""

    purchase_id: str
    kind: str
    amount: int
    """The purchase's tokens of this kind."""
    expires_at: datetime
    capacity_after: int
    """The capacity of this kind once it has expired (and every purchase named before it)."""
    allocated_after: int
    """Allocated of this kind after this distribution."""
    over: int
    """`allocated_after` - `capacity_after`: by how much the organization would be over."""
    message: str


class DistributionOut(BaseModel):
    applied: bool
    accepted: bool
    """Whether applying would be (or was) accepted: no refused rows."""
    users: int
    """The users chosen (all active users, or those named)."""
    kinds: dict[str, KindDistribution]
    refused: list[dict[str, object]]
    """Each refused row with its `code` and `message` (and the `kind` where it applies)."""
    preview_token: str
    """Names exactly what this answer shows; send it back to apply only that."""
    expiring: list[ExpiringPurchase] = []
    """The purchases expiring soon whose expiry would leave the organization over-allocated
    after this distribution, soonest first, one entry per purchase and kind."""
