"""The bodies of the Ask Sage API: the fields Ask Sage's API and client send, and the few
tokenadmin adds (`org_id` for operators, the token request and distribution fields of the
services they call)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StrictBool

from tokenadmin.distribution.schemas import DistributionApply, DistributionRequest
from tokenadmin.organization.schemas import PurchaseCreate
from tokenadmin.schemas import Amount, Input, PositiveAmount, Text
from tokenadmin.token_request.schemas import Note, Reason, RequestState
from tokenadmin.tokens import Kind

UserRef = Annotated[
    str,
    Field(min_length=1, max_length=320, description="The user's id, or their email."),
]
OrgId = Annotated[
    uuid.UUID | None,
    Field(description="Operators only: the organization to act in (others act in their own)."),
]


class Lenient(BaseModel):
    """A body of Ask Sage's own endpoints: fields the client sends that tokenadmin does not
    use (personas, live search...) are ignored, or refused where they would change the
    answer (see the endpoint)."""

    model_config = ConfigDict(extra="ignore")


class Nothing(Input):
    """A call with no fields (an empty body, `{}` or no body at all)."""


class TokenFor(Input):
    email: Annotated[str, Field(min_length=1, max_length=320)]
    api_key: Annotated[str, Field(min_length=1, max_length=200)]


class Content(Lenient):
    content: Annotated[Text, Field(max_length=10_000_000)]


class Query(Lenient):
    """`/server/query`: the form fields of `asksageclient.query` (or the same as JSON)."""

    message: Annotated[Text, Field(min_length=1, max_length=10_000_000)] = Field(
        description="The prompt, or a JSON list of turns [{user: me|gpt, message}]."
    )
    model: Annotated[Text, Field(min_length=1, max_length=200)]
    system_prompt: Text | None = Field(default=None, max_length=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: PositiveAmount | None = None
    persona: Text | None = None
    dataset: Text | None = None
    limit_references: int | None = None
    live: int = 0
    tools: Text | None = Field(default=None, description="OpenAI tools, as JSON text.")
    tool_choice: Text | None = Field(default=None, description="As JSON text.")
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    file: Any = None


class Train(Lenient):
    content: Annotated[Text, Field(min_length=1, max_length=10_000_000)]
    force_dataset: Text | None = Field(default=None, max_length=500)
    context: Text | None = Field(default=None, max_length=2000)
    skip_vectordb: bool | str | None = None


class TrainWithFile(Lenient):
    file: Any
    dataset: Text | None = Field(default=None, max_length=500)


class UsersWithTokens(Input):
    start: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    limit: Annotated[int, Field(ge=1, le=1000)] = 200
    email: EmailStr | None = None
    org_id: OrgId = None


class SetTokens(Input):
    id: UserRef | int
    tokens: Amount
    org_id: OrgId = None


class SetBanned(Input):
    id: UserRef | int
    banned: StrictBool
    org_id: OrgId = None


class InOrg(Input):
    """An admin-* call that reads the organization."""

    org_id: OrgId = None


class AskTokens(Input):
    tokens: PositiveAmount = Field(description="The tokens asked for, on top of the allowance.")
    kind: Kind = Kind.inference
    reason: Reason


class MyRequests(Input):
    state: RequestState | None = None
    kind: Kind | None = None
    start: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 50


class OrgRequests(Input):
    state: RequestState | Literal["any"] = "pending"
    kind: Kind | None = None
    start: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    user: UserRef | None = None
    org_id: OrgId = None


class Review(Input):
    id: uuid.UUID
    decision: Literal["approve", "deny"]
    tokens: PositiveAmount | None = Field(
        default=None, description="Approving: the tokens granted (default: the amount asked)."
    )
    note: Note | None = None


class DistributionPreview(DistributionRequest):
    org_id: OrgId = None


class DistributionExecute(DistributionApply):
    org_id: OrgId = None


class AddPurchase(PurchaseCreate):
    org_id: uuid.UUID


class OrgPurchases(Input):
    org_id: uuid.UUID
