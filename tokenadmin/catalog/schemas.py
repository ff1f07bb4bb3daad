"""Bodies and answers of the model catalog routes: per-model rates, model access and an
organization's upstream (the Python client imports these).

Rates are exact decimals. A body gives them as JSON text ("0.5", "1.25") or integers; a
JSON fraction is accepted only when it is exactly what it says (0.5, 0.25), since 0.1 as a
binary float is not 0.1. Answers give them as text. Upstream keys are write-only: answers
say whether one is set, never what it is.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from tokenadmin.catalog.rates import (
    MAX_MODELS_ALLOWED,
    MAX_RATE,
    RATE_ERROR,
    RATE_PLACES,
    RATE_TEXT_LENGTH,
    parse_rate,
    plain,
)
from tokenadmin.schemas import Input, PositiveAmount, Text

if TYPE_CHECKING:
    from tokenadmin.catalog.service import ModelInfo
    from tokenadmin.models import LlmModel, Organization


def _rate_input(value: object) -> Decimal:
    try:
        return parse_rate(value)
    except ValueError as error:
        # The error's type is the refusal's code: the API answers 422 invalid_rate (app.py).
        raise PydanticCustomError(RATE_ERROR, str(error)) from error


RATE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "string",
            "maxLength": RATE_TEXT_LENGTH,
            "pattern": r"^\s*(0*[0-9]{1,6}(\.[0-9]{1,6})?|0*1000000(\.0{1,6})?|\.[0-9]{1,6})\s*$",
        },
        {"type": "integer", "minimum": 0, "maximum": int(MAX_RATE)},
    ],
    "description": f"An exact decimal from 0 to {int(MAX_RATE):,} with at most {RATE_PLACES}"
    ' decimal places, as text ("0.5") or an integer.',
    "examples": ["0.5"],
}

RateIn = Annotated[Decimal, BeforeValidator(_rate_input), WithJsonSchema(RATE_SCHEMA)]
"""A rate in a body: text or an integer, refused as `invalid_rate`."""

RateOut = Annotated[
    Decimal,
    PlainSerializer(lambda rate: f"{plain(rate):f}", return_type=str),
    WithJsonSchema({"type": "string", "examples": ["0.5"]}, mode="serialization"),
]
"""A rate in an answer: its exact decimal as text, "0.5"."""

ModelName = Annotated[
    Text,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(examples=["gpt-4o-mini"]),
]
"""A model's name as clients send it to the gateway (1 to 200 characters)."""


def _upstream_url(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("an upstream base URL is http(s)://host[:port][/path]")
    return value


UpstreamUrl = Annotated[
    Text,
    BeforeValidator(_upstream_url),
    Field(min_length=1, max_length=500, examples=["https://api.openai.com/v1"]),
]
Secret = Annotated[Text, Field(min_length=1, max_length=500, description="Write-only.")]
Source = Literal["platform", "organization"]


class ModelSet(Input):
    """A model's rates and where its requests go (the platform's default, or an
    organization's own)."""

    prompt_rate: RateIn = Field(description="Tokens charged per prompt token.")
    completion_rate: RateIn = Field(description="Tokens charged per completion token.")
    upstream_base_url: UpstreamUrl | None = Field(
        default=None,
        description="The OpenAI-compatible server for this model (default: the"
        " organization's upstream, then the platform's).",
    )
    upstream_api_key: Secret | None = Field(
        default=None,
        description="The upstream's key. Write-only: left out, the stored key stays; null"
        " clears it.",
    )
    upstream_model: ModelName | None = Field(
        default=None, description="The name sent upstream (default: the model's name)."
    )
    max_output_tokens: PositiveAmount | None = Field(
        default=None,
        description="Completion tokens reserved for a request that names no max_tokens.",
    )


class CatalogModelOut(BaseModel):
    """A stored row of the catalog: the platform's default (`org_id` null) or an
    organization's own."""

    name: str
    org_id: str | None
    prompt_rate: RateOut
    completion_rate: RateOut
    upstream_base_url: str | None
    upstream_api_key_set: bool = Field(description="Whether a key is stored; never the key.")
    upstream_model: str | None
    max_output_tokens: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: LlmModel) -> CatalogModelOut:
        return cls(
            name=row.name,
            org_id=None if row.org_id is None else str(row.org_id),
            prompt_rate=Decimal(row.prompt_rate),
            completion_rate=Decimal(row.completion_rate),
            upstream_base_url=row.upstream_base_url,
            upstream_api_key_set=row.upstream_api_key is not None,
            upstream_model=row.upstream_model,
            max_output_tokens=row.max_output_tokens,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ModelOut(BaseModel):
    """A model as an organization sees it: its rates (its own, else the platform's),
    whether it may use it, and whether its requests have somewhere to go."""

    name: str
    prompt_rate: RateOut
    completion_rate: RateOut
    source: Source = Field(description="Whose rates apply: the platform's or its own.")
    allowed: bool = Field(description="Whether the organization's users may call it.")
    max_output_tokens: int | None
    upstream_configured: bool = Field(
        description="Whether an upstream is set for it (its own, the organization's or the"
        " platform's)."
    )

    @classmethod
    def of(cls, info: ModelInfo) -> ModelOut:
        return cls(
            name=info.name,
            prompt_rate=info.rate.prompt,
            completion_rate=info.rate.completion,
            source=info.source,
            allowed=info.allowed,
            max_output_tokens=info.max_output_tokens,
            upstream_configured=info.upstream_configured,
        )


class UpstreamOut(BaseModel):
    base_url: str | None
    api_key_set: bool = Field(description="Whether a key is stored; never the key.")

    @classmethod
    def of(cls, org: Organization) -> UpstreamOut:
        return cls(base_url=org.upstream_base_url, api_key_set=org.upstream_api_key is not None)


class OrganizationModelsOut(BaseModel):
    models: list[ModelOut] = Field(description="Every model of the catalog, by name.")
    allowed_models: list[str] | None = Field(
        description="The models its users may call; null: all of them."
    )
    upstream: UpstreamOut = Field(description="The organization's own upstream.")

    @classmethod
    def of(cls, org: Organization, models: list[ModelInfo]) -> OrganizationModelsOut:
        """The catalog as `org` sees it (catalog.service.models_for), with its access list
        and its upstream."""
        return cls(
            models=[ModelOut.of(info) for info in models],
            allowed_models=None if org.allowed_models is None else list(org.allowed_models),
            upstream=UpstreamOut.of(org),
        )


class ModelAccessIn(Input):
    allowed: Annotated[list[ModelName], Field(max_length=MAX_MODELS_ALLOWED)] | None = Field(
        description="The models the organization's users may call; null: every model."
    )


class AccessOut(BaseModel):
    allowed_models: list[str] | None


class UpstreamIn(Input):
    base_url: UpstreamUrl | None = Field(
        description="The organization's OpenAI-compatible server; null clears it (and its key)."
    )
    api_key: Secret | None = Field(
        default=None,
        description="Its key. Write-only: left out, the stored key stays; null clears it.",
    )
