from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, Field, StrictInt, field_validator, model_validator

from tokenadmin.schemas import (
    WHOLE,
    Amount,
    FieldRule,
    Input,
    PositiveAmount,
    Text,
    check_json_value,
)
from tokenadmin.tokens import Kind

MAX_METADATA_BYTES = 4096


class UsageFields(Input):
    user: Text = Field(min_length=1, max_length=320, description="User id or email.")
    kind: Kind
    # Left out, the counts are charged by rates; null is refused like any other bad amount
    # (SPEC rule 8), so the type admits no None although the default is one.
    tokens: PositiveAmount = Field(  # type: ignore[assignment]
        default=None,
        description="Tokens charged. Leave it out and send prompt_tokens and completion_tokens"
        " to have them charged by the model's rates: ceil(prompt x prompt rate + completion x"
        " completion rate).",
    )
    model: Text | None = Field(default=None, max_length=200)
    prompt_tokens: Amount | None = None
    completion_tokens: Amount | None = None
    dataset: Text | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> UsageFields:
        prompt, completion = self.prompt_tokens, self.completion_tokens
        if self.tokens is None:
            if prompt is None or completion is None:
                raise FieldRule(
                    "tokens",
                    "send tokens, or prompt_tokens and completion_tokens to be charged by the"
                    " model's rates",
                )
        elif (
            self.model is None
            and prompt is not None
            and completion is not None
            and prompt + completion != self.tokens
        ):
            # Without a model no rate applies: the counts are the tokens. With one, `tokens`
            # is what the platform charged and the counts are the raw counts.
            raise FieldRule(
                "tokens",
                f"prompt_tokens + completion_tokens must equal tokens: {prompt:,} +"
                f" {completion:,} is {prompt + completion:,}, not {self.tokens:,}",
            )
        return self

    @field_validator("metadata")
    @classmethod
    def _storable(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        if metadata is not None:
            check_json_value(metadata, "metadata")
            if len(json.dumps(metadata)) > MAX_METADATA_BYTES:
                raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
        return metadata

    def details(self) -> dict[str, Any] | None:
        fields = self.model_dump(
            include={"model", "prompt_tokens", "completion_tokens", "dataset", "metadata"},
            exclude_none=True,
        )
        return fields or None


class UsageEvent(UsageFields):
    idempotency_key: str = Field(min_length=1, max_length=255)


class UsageBatch(Input):
    events: list[UsageEvent] = Field(min_length=1, max_length=1000)


class UsageAccepted(BaseModel):
    accepted: bool
    user_id: str
    email: str
    kind: Kind
    tokens: int
    allowance: int
    used: int
    reserved: int
    remaining: int = Field(description="What the user may still use of this kind.")
    journal_entry_id: int


class BatchResult(BaseModel):
    index: int
    status: int
    accepted: bool
    replayed: bool
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class BatchOut(BaseModel):
    accepted: int
    refused: int
    results: list[BatchResult]


class ReservationCreate(UsageFields):
    ttl_seconds: Annotated[StrictInt, Field(ge=1, le=86400), WHOLE] | None = None


class Commit(Input):
    tokens: Amount | None = Field(
        default=None, description="Tokens actually used; defaults to the amount reserved."
    )


class ReservationOut(BaseModel):
    id: str
    status: str
    user_id: str
    email: str
    kind: Kind
    tokens: int
    committed: int | None
    expires_at: str
    allowance: int
    used: int
    reserved: int
    remaining: int
    journal_entry_id: int | None
