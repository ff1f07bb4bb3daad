"""Shared field types for request and response bodies."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    model_validator,
)

from tokenadmin.tokens import MAX_AMOUNT


def _whole(value: object) -> object:
    # JSON has one kind of number: 250000.0 is the whole number 250000, and the OpenAPI's
    # "integer" says so too. Floats are exact up to 2^53, the largest amount; beyond, a float
    # stays a float and is refused, as fractions, strings and booleans are (StrictInt).
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_AMOUNT:
        return int(value)
    return value


WHOLE = BeforeValidator(_whole)
"""Integers are written with or without a fractional part of zero (250000 or 250000.0).
Put it after the constraints: before them, they would drop out of the JSON schema."""

WholeNumber = Annotated[StrictInt, WHOLE]
Amount = Annotated[
    StrictInt, Field(ge=0, le=MAX_AMOUNT, description="Whole tokens, 0 to 2^53."), WHOLE
]
PositiveAmount = Annotated[
    StrictInt, Field(gt=0, le=MAX_AMOUNT, description="Whole tokens, 1 to 2^53."), WHOLE
]

WITHOUT_NUL = "^[^\\x00]*$"
"""What the OpenAPI says of every text field: anything but the NUL character."""


def _storable_text(value: object) -> object:
    # PostgreSQL can't store U+0000 in text or JSON, and no name or note needs it; an
    # unpaired surrogate (JSON's "\ud800") can't even be encoded as UTF-8. Both are refused
    # here, on every database alike, before they could fail a write as a 500.
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
        if _has_surrogate(value):
            raise ValueError("must not contain unpaired surrogates (U+D800 to U+DFFF)")
    return value


def _has_surrogate(text: str) -> bool:
    if text.isascii():  # the usual case, answered at C speed
        return False
    return any("\ud800" <= c <= "\udfff" for c in text)


def storable(text: str) -> bool:
    """Whether every database can store and compare `text`: no NUL, no unpaired surrogate.
    No stored name, email or note holds either (Text refuses them), so a search for text
    that isn't storable finds nothing, on every database, instead of failing on one."""
    return "\x00" not in text and not _has_surrogate(text)


_STORABLE = (BeforeValidator(_storable_text), Field(json_schema_extra={"pattern": WITHOUT_NUL}))

Text = Annotated[str, *_STORABLE]
"""Free text of a request: any characters but NUL and unpaired surrogates. Its length is
given where it is used: `Field(max_length=...)`."""

Name = Annotated[str, StringConstraints(min_length=1, max_length=200), *_STORABLE]


def written_out(example: str) -> BeforeValidator:
    """Times and dates are ISO 8601 text: a number, or text that is one, is refused with a
    message that shows `example`."""

    def check(value: object) -> object:
        # Pydantic reads a number, or text that is one ("1800000000", "0.5", even the ISO
        # basic date "20270101"), as seconds (or milliseconds) since 1970: a client that
        # meant another unit would silently get a time decades off.
        if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
            raise ValueError(f"write ISO 8601 text, such as {example}, not a number")
        return value

    return BeforeValidator(check)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _within_the_calendar(moment: datetime) -> datetime:
    # Moved to UTC or to an organization's zone, a time in the years 1 or 9999 can fall
    # outside the calendar Python knows (OverflowError); no token moves that early or late.
    if not 2 <= moment.year <= 9998:
        raise ValueError("a time must fall between the years 2 and 9998")
    return moment


WITHIN_THE_CALENDAR = AfterValidator(_within_the_calendar)
"""A time in the years 2 to 9998, which UTC and every zone can hold."""

Moment = Annotated[AwareDatetime, written_out("2026-03-01T00:00:00Z"), WITHIN_THE_CALENDAR]
"""A time written out as ISO 8601 text with its offset (2026-03-01T00:00:00Z), in the years
2 to 9998."""


def check_json_value(value: Any, field: str) -> None:
    """Refuse what a JSON column can't store on every database: NUL characters and lone
    surrogates in strings (keys included), and NaN or infinite numbers, which Python's
    JSON reader accepts but JSON has no spelling for."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{field} must not contain the NUL character (U+0000)")
        if _has_surrogate(value):
            raise ValueError(f"{field} must not contain unpaired surrogates (U+D800 to U+DFFF)")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{field} must not contain NaN or infinite numbers")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_json_value(key, field)
            check_json_value(item, field)
    elif isinstance(value, list):
        for item in value:
            check_json_value(item, field)


class FieldRule(ValueError):
    """A rule across fields, checked by a model validator, broken: it names the field a
    person should fix, which the API's refusal gives as `details.errors[].field` (pydantic
    itself names no field for a model validator's error)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def one_of_required(*fields: str, message: str) -> Any:
    """A model check, assigned in the class body: at least one of `fields` is given."""

    def check(model: BaseModel) -> BaseModel:
        if all(getattr(model, field) is None for field in fields):
            raise ValueError(message)
        return model

    return model_validator(mode="after")(check)


class Input(BaseModel):
    """A request body: unknown fields are refused, so nothing is set by accident."""

    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    """An answer made of the attributes of the same names of one object (a row, a service's
    result): `XOut.of(x)`."""

    @classmethod
    def of(cls, source: object) -> Self:
        return cls.model_validate(source, from_attributes=True)


def columns_of(answer: type[BaseModel], row: object, *computed: str) -> dict[str, Any]:
    """The fields of `answer` read from the attributes of the same name of `row` (a model
    object), all but the `computed` ones, which the caller adds."""
    return {field: getattr(row, field) for field in answer.model_fields if field not in computed}


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, object]


class ErrorOut(BaseModel):
    error: ErrorBody


ERROR_ANSWERS: dict[int, str] = {
    400: "The body can't be read: not JSON, or not an object (malformed_json).",
    401: "No API key, or a key that is wrong or revoked (unauthenticated).",
    402: "It does not fit what remains (insufficient_tokens); `details` say what does.",
    403: "The key lacks the scope this needs (forbidden).",
    404: "No such object for this caller (not_found, user_not_found, reservation_not_found).",
    409: "A conflict with what is stored now: a version, a state, a key still in flight.",
    413: "The body is over the size limit (request_too_large).",
    422: "A value, or a change the rules refuse; the code says which (docs/api.md, Errors).",
    503: "The server was stopping, or could not reach its database (unavailable): send it"
    " again after Retry-After seconds, a write with the same Idempotency-Key, as one cut off"
    " from the database may have been applied (the key applies it at most once).",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the request again.",
        "schema": {"type": "integer"},
    }
}
"""The header of every 503 answer (errors.Unavailable)."""


def error_answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these statuses, each in the one error shape."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answers[status] = {"model": ErrorOut, "description": ERROR_ANSWERS[status]}
        if status == 503:
            answers[status]["headers"] = RETRY_AFTER
    return answers


PreviewToken = Annotated[
    str,
    Field(
        min_length=64,
        max_length=64,
        pattern="^[0-9a-f]{64}$",
        description="The `preview_token` of the preview being applied.",
    ),
]
"""A preview's fingerprint, sent back to apply exactly what was previewed (a distribution,
a revert): refused as preview_stale when anything changed since."""
