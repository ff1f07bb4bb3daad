from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool

from tokenadmin.schemas import Amount, Input, Text, WholeNumber, one_of_required


class AllowanceRow(Input):
    user: Text = Field(min_length=1, max_length=320, description="User id or email.")
    max_tokens: Amount | None = None
    max_train_tokens: Amount | None = None
    expected_version: WholeNumber | None = None
    _something_to_change = one_of_required(
        "max_tokens",
        "max_train_tokens",
        message="each row needs max_tokens, max_train_tokens or both",
    )


class AllowanceChange(Input):
    changes: list[AllowanceRow] = Field(min_length=1, max_length=100_000)
    dry_run: StrictBool = False
    reason: Text | None = Field(default=None, max_length=500)


class ChangeOut(BaseModel):
    user_id: str
    email: str
    kind: str
    field: str
    before: int
    after: int


class KindAfterOut(BaseModel):
    capacity: int
    allocated: int
    balance: int


class AllowancePreview(BaseModel):
    applied: bool
    dry_run: bool
    accepted: bool
    changes: list[ChangeOut]
    refused: list[dict[str, object]]
    balance_after: dict[str, KindAfterOut]
