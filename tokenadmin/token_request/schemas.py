"""Bodies and answers of the token request routes (the Python client imports these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

from tokenadmin.schemas import Input, PositiveAmount, Text, columns_of
from tokenadmin.tokens import Kind

if TYPE_CHECKING:
    from tokenadmin.models import TokenRequest, User

RequestState = Literal["pending", "approved", "denied", "withdrawn"]
STATES: tuple[RequestState, ...] = ("pending", "approved", "denied", "withdrawn")

Reason = Annotated[Text, Field(min_length=1, max_length=500)]
Note = Annotated[Text, Field(max_length=500)]


class TokenRequestAsk(Input):
    user: Text | None = Field(
        default=None,
        min_length=1,
        max_length=320,
        description="Who asks (id or email). A key acting for the organization's users"
        " names them; a member's own key may leave it out.",
    )
    kind: Kind
    amount: PositiveAmount = Field(description="The tokens asked for, on top of the allowance.")
    reason: Reason = Field(description="Why the tokens are needed; the administrators read it.")


class TokenRequestApprove(Input):
    amount: PositiveAmount | None = Field(
        default=None,
        description="The tokens granted, added to the allowance (default: the amount asked).",
    )
    note: Note | None = Field(default=None, description="A word to the member.")


class TokenRequestDeny(Input):
    note: Annotated[Text, Field(min_length=1, max_length=500)] = Field(
        description="Why not: the member reads it."
    )


class TokenRequestOut(BaseModel):
    id: uuid.UUID
    org_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    name: str
    kind: Kind
    amount: int = Field(description="The tokens asked for.")
    reason: str
    state: RequestState
    created_at: datetime
    created_by: str
    decided_at: datetime | None
    decided_by: str | None
    note: str | None = Field(description="The decision's note (approving or denying).")
    approved_amount: int | None = Field(
        description="The tokens granted: added to the allowance when the request was approved."
    )
    version: int = Field(description="1 when asked, 2 once decided.")

    @classmethod
    def of(cls, request: TokenRequest, user: User) -> TokenRequestOut:
        """A request, with the email and name of the user it is for."""
        return cls(**columns_of(cls, request, "email", "name"), email=user.email, name=user.name)


class TokenRequestPage(BaseModel):
    requests: list[TokenRequestOut]
    total: int
    limit: int
    offset: int
