from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, StrictBool

from tokenadmin.schemas import Amount, Input, PreviewToken, Text, WholeNumber, one_of_required


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
    batch: str | None = None
    """The id of the saved batch once applied: list it, or revert it, under
    /v1/organizations/{org_id}/allowance-batches."""


class BatchQuery(BaseModel):
    """A page of saved batches (query parameters)."""

    before: str | None = Field(
        default=None,
        min_length=36,
        max_length=36,
        pattern="^[0-9a-f-]{36}$",
        description="Batches older than this one: the last id of the page before.",
    )
    limit: int = Field(default=50, ge=1, le=200)


class BatchOut(BaseModel):
    """A saved allowance change (a batch): who saved it, when, why, what it moved."""

    id: str
    at: datetime
    actor: str
    reason: str | None
    rows: int
    """Journal entries: one per user and allowance changed."""
    users: int
    delta: dict[str, int]
    """Per kind, the sum of the changes (negative when the batch lowered allowances)."""
    reverts: str | None
    """The batch this one reverted, when it is a revert."""
    reverted: bool
    reverted_by: str | None
    reverted_at: datetime | None
    reverted_by_actor: str | None


class BatchPage(BaseModel):
    batches: list[BatchOut]
    next_before: str | None
    """Pass as `before` for the next (older) page; null on the last page."""


class RevertRequest(Input):
    """Revert a saved batch; with `preview_token`, only if nothing changed since that
    preview (else 409 preview_stale)."""

    dry_run: StrictBool = False
    preview_token: PreviewToken | None = None


class RevertRowOut(BaseModel):
    user_id: str
    email: str
    name: str | None
    kind: str
    field: str
    saved_from: int
    """The allowance before the save: what the revert sets it back to."""
    saved_to: int
    """The allowance the save set."""
    now: int | None
    back_to: int
    revertable: bool
    reasons: list[dict[str, object]]
    """Why the row can't be reverted: each with its `code` and `message`."""


class RevertPreview(BaseModel):
    batch: BatchOut
    applied: bool
    dry_run: bool
    revert_batch: str | None
    """The id of the batch the revert saved (its entries' `details.reverts` is `batch.id`)."""
    reason: str
    rows: list[RevertRowOut]
    revertable: int
    refused: int
    balance_after: dict[str, KindAfterOut]
    preview_token: str
    """Names exactly what this preview shows; send it back to apply only that."""
