"""Shared field types for request and response bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from tokenadmin.tokens import MAX_AMOUNT

Amount = Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT, description="Whole tokens, 0 to 2^53.")]
PositiveAmount = Annotated[
    StrictInt, Field(gt=0, le=MAX_AMOUNT, description="Whole tokens, 1 to 2^53.")
]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class Input(BaseModel):
    """A request body: unknown fields are refused, so nothing is set by accident."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, object]


class ErrorOut(BaseModel):
    error: ErrorBody
