"""The model catalog: per-model rates, model access and upstreams, for every surface.

A model's rates are the platform's default for it, or an organization's override: tokens
charged = ceil(prompt x prompt rate + completion x completion rate), in exact decimals.
An organization may use every model of the catalog, or the ones it names. A model's
requests go to the first upstream found of: the organization's row of the model, the
organization's own upstream, the platform's row of the model, the settings
(TOKENADMIN_UPSTREAM_BASE_URL). The metering routes (the gateway, the Ask Sage API,
`/v1/usage` with a model) take their rates from here, and nothing else decides them.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import ROUND_CEILING, Context, Decimal
from typing import Any, Final, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import check_amount
from tokenadmin.catalog import rates, repository
from tokenadmin.config import Settings
from tokenadmin.errors import (
    InvalidRequest,
    ModelNotAllowed,
    ModelNotFound,
    NotFound,
    UpstreamNotConfigured,
)
from tokenadmin.journal.service import record
from tokenadmin.models import LlmModel, Organization
from tokenadmin.organization.service import lock_for_change

DEMO_BASE_URL = "http://demo-model.invalid/v1"
"""The built-in demo model's upstream: the gateway's HTTP client answers this host itself
(gateway/demo.py); `.invalid` never resolves, so nothing leaves the machine."""

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")
_EXACT = Context(prec=80)  # wide enough for 2^53 tokens times the largest rate, exactly


class Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()
"""An upstream key left as it is (keys are write-only: a form that can't show one sends this)."""


@dataclass(frozen=True, slots=True)
class Rate:
    prompt: Decimal
    completion: Decimal

    def charge(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Tokens charged: ceil(prompt x prompt rate + completion x completion rate)."""
        exact = _EXACT.add(
            _EXACT.multiply(Decimal(prompt_tokens), self.prompt),
            _EXACT.multiply(Decimal(completion_tokens), self.completion),
        )
        return int(exact.to_integral_value(rounding=ROUND_CEILING))

    def as_details(self) -> dict[str, str]:
        """The rates as a usage record keeps them (exact decimal text)."""
        return {
            "prompt_rate": rate_text(self.prompt),
            "completion_rate": rate_text(self.completion),
        }


DEFAULT_RATE = Rate(Decimal(1), Decimal(1))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    rate: Rate
    source: Literal["platform", "organization"]
    allowed: bool
    max_output_tokens: int | None
    upstream_configured: bool


@dataclass(frozen=True, slots=True)
class Upstream:
    base_url: str
    api_key: str | None
    model: str  # the name the upstream knows the model by


@dataclass(frozen=True, slots=True)
class Route:
    info: ModelInfo
    upstream: Upstream


def parse_rate(value: object, field: str = "rate") -> Decimal:
    """A rate as an exact decimal from 0 to 1,000,000 with at most 6 decimal places, else
    422 invalid_rate naming `field` (catalog/rates.py: the one parser of every interface)."""
    return rates.rate_or_refuse(value, field)


def rate_text(rate: Decimal) -> str:
    """The canonical text of a rate: no exponent, no trailing zeros ("0.5", "2")."""
    return f"{rates.plain(rate):f}"


def check_name(name: str, field: str = "model") -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidRequest(
            f"{field} must be 1 to 200 letters, digits or . _ : / @ + -, starting with a letter"
            f" or digit; got {str(name)[:60]!r}.",
            code="invalid_model_name",
            details={"field": field},
        )
    return name


def _check_base_url(url: str) -> str:
    shaped = re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url)
    if not shaped or len(url) > 500 or not url.isprintable():
        raise InvalidRequest(
            "The upstream base URL must be an http:// or https:// URL of at most 500"
            f" characters, such as https://api.openai.com/v1; got {url[:80]!r}.",
            code="invalid_upstream",
            details={"field": "base_url"},
        )
    return url.rstrip("/")


def _check_key(key: str) -> str:
    if not key or len(key) > 500 or not key.isprintable() or any(c.isspace() for c in key):
        raise InvalidRequest(
            "The upstream API key must be 1 to 500 printable characters without spaces.",
            code="invalid_upstream",
            details={"field": "api_key"},
        )
    return key


def _rate_of(row: LlmModel) -> Rate:
    return Rate(Decimal(row.prompt_rate), Decimal(row.completion_rate))


async def _organization(session: AsyncSession, org_id: uuid.UUID) -> Organization:
    org = await session.get(Organization, org_id)
    if org is None:
        raise NotFound("Organization not found.")
    return org


def _pick(
    rows: list[LlmModel], org_id: uuid.UUID | None
) -> dict[str, tuple[LlmModel | None, LlmModel | None]]:
    """By name: (the organization's row, the platform's row)."""
    found: dict[str, tuple[LlmModel | None, LlmModel | None]] = {}
    for row in rows:
        own, platform = found.get(row.name, (None, None))
        if row.org_id is None:
            platform = row
        elif row.org_id == org_id:
            own = row
        found[row.name] = (own, platform)
    return found


def _upstream(
    name: str,
    own: LlmModel | None,
    platform: LlmModel | None,
    org: Organization | None,
    settings: Settings | None,
) -> Upstream | None:
    upstream_model = (own and own.upstream_model) or (platform and platform.upstream_model) or name
    sources: list[tuple[str | None, str | None]] = []
    if own is not None:
        sources.append((own.upstream_base_url, own.upstream_api_key))
    if org is not None:
        sources.append((org.upstream_base_url, org.upstream_api_key))
    if platform is not None:
        sources.append((platform.upstream_base_url, platform.upstream_api_key))
    if settings is not None:
        sources.append((settings.upstream_base_url, settings.upstream_api_key))
    for base_url, api_key in sources:
        if base_url:
            return Upstream(base_url, api_key, upstream_model)
    return None


def _info(
    name: str,
    own: LlmModel | None,
    platform: LlmModel | None,
    org: Organization | None,
    settings: Settings | None,
) -> ModelInfo:
    row = own or platform
    assert row is not None
    allowed = org is None or org.allowed_models is None or name in org.allowed_models
    return ModelInfo(
        name=name,
        rate=_rate_of(row),
        source="organization" if own is not None else "platform",
        allowed=allowed,
        max_output_tokens=row.max_output_tokens,
        upstream_configured=_upstream(name, own, platform, org, settings) is not None,
    )


async def models_for(
    session: AsyncSession, org_id: uuid.UUID | None, settings: Settings | None = None
) -> list[ModelInfo]:
    """The catalog as an organization sees it (the platform's alone when `org_id` is None):
    each model with its rates, where they come from and whether the organization may use it.
    `settings` counts the platform's default upstream in `upstream_configured`."""
    org = None if org_id is None else await _organization(session, org_id)
    rows = list(await repository.rows_for(session, org_id))
    return [
        _info(name, own, platform, org, settings)
        for name, (own, platform) in sorted(_pick(rows, org_id).items())
    ]


async def route(
    session: AsyncSession, settings: Settings | None, org_id: uuid.UUID, name: str
) -> Route:
    """The model a request of `org_id` names: its rates and its upstream; refused when the
    catalog lacks it, the organization may not use it, or it has nowhere to go."""
    org = await _organization(session, org_id)
    rows = list(await repository.rows_for(session, org_id))
    own, platform = _pick(rows, org_id).get(name, (None, None))
    if own is None and platform is None:
        raise ModelNotFound(
            f"There is no model '{name[:200]}'. List the models you may use with GET"
            " /openai/v1/models.",
            details={"model": name[:200]},
        )
    info = _info(name, own, platform, org, settings)
    if not info.allowed:
        raise ModelNotAllowed(
            f"Your organization may not use the model '{name}'. An administrator can allow it"
            " on the Models page.",
            details={"model": name},
        )
    upstream = _upstream(name, own, platform, org, settings)
    if upstream is None:
        raise UpstreamNotConfigured(
            f"The model '{name}' has no upstream to send requests to. An administrator sets"
            " one for the model or the organization.",
            details={"model": name},
        )
    return Route(info, upstream)


async def rate_for(session: AsyncSession, org_id: uuid.UUID, name: str) -> Rate:
    """The rates of `name` for `org_id`; 1 and 1 for a model the catalog does not have."""
    rows = list(await repository.rows_for(session, org_id))
    own, platform = _pick(rows, org_id).get(name, (None, None))
    row = own or platform
    return DEFAULT_RATE if row is None else _rate_of(row)


async def set_model(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID | None,
    name: str,
    *,
    prompt_rate: str | int | Decimal,
    completion_rate: str | int | Decimal,
    upstream_base_url: str | None = None,
    upstream_api_key: str | Unset | None = UNSET,
    upstream_model: str | None = None,
    max_output_tokens: int | None = None,
) -> ModelInfo:
    """Add or change a model of the platform (`org_id` None) or an organization's override.
    An organization's change is journaled; the upstream key is never written to the journal."""
    check_name(name)
    prompt = parse_rate(prompt_rate, "prompt_rate")
    completion = parse_rate(completion_rate, "completion_rate")
    base_url = None if upstream_base_url is None else _check_base_url(upstream_base_url)
    if upstream_model is not None:
        check_name(upstream_model, "upstream_model")
    if max_output_tokens is not None:
        check_amount(max_output_tokens, positive=True, field="max_output_tokens")
    org = None if org_id is None else await lock_for_change(session, act, org_id)
    row = await repository.named(session, org_id, name, lock=True)
    if row is None:
        row = LlmModel(id=uuid.uuid4(), org_id=org_id, name=name, created_at=act.now)
        session.add(row)
    row.prompt_rate = rate_text(prompt)
    row.completion_rate = rate_text(completion)
    row.upstream_base_url = base_url
    if not isinstance(upstream_api_key, Unset):
        row.upstream_api_key = None if upstream_api_key is None else _check_key(upstream_api_key)
    if base_url is None:
        row.upstream_api_key = None
    row.upstream_model = upstream_model
    row.max_output_tokens = max_output_tokens
    row.updated_at = act.now
    if org is not None:
        record(session, act, org, "model_set", details=_described(row))
    await session.flush()
    return _info(name, row if org_id else None, None if org_id else row, org, None)


def _described(row: LlmModel) -> dict[str, Any]:
    return {
        "model": row.name,
        "prompt_rate": row.prompt_rate,
        "completion_rate": row.completion_rate,
        "upstream_base_url": row.upstream_base_url,
        "upstream_api_key_set": row.upstream_api_key is not None,
        "upstream_model": row.upstream_model,
        "max_output_tokens": row.max_output_tokens,
    }


async def delete_model(
    session: AsyncSession, act: Act, org_id: uuid.UUID | None, name: str
) -> None:
    """Remove a platform model, or an organization's override (the platform's rates apply
    again, if it has the model)."""
    check_name(name)
    org = None if org_id is None else await lock_for_change(session, act, org_id)
    row = await repository.named(session, org_id, name, lock=True)
    if row is None:
        where = "the platform" if org_id is None else "this organization"
        raise ModelNotFound(f"{where.capitalize()} has no model '{name[:200]}'.")
    await session.delete(row)
    if org is not None:
        record(session, act, org, "model_removed", details={"model": name})
    await session.flush()


async def set_access(
    session: AsyncSession, act: Act, org_id: uuid.UUID, allowed: list[str] | None
) -> list[str] | None:
    """Which models the organization's users may call: the names given, or every model
    (None). Names need not be in the catalog yet (a model added later is then allowed)."""
    if allowed is not None:
        if len(allowed) > rates.MAX_MODELS_ALLOWED:
            raise InvalidRequest(
                f"At most {rates.MAX_MODELS_ALLOWED:,} models can be named.", code="invalid_request"
            )
        allowed = sorted({check_name(name) for name in allowed})
    org = await lock_for_change(session, act, org_id)
    before = org.allowed_models
    org.allowed_models = allowed
    org.updated_at = act.now
    record(session, act, org, "model_access_changed", details={"before": before, "after": allowed})
    return allowed


async def set_upstream(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    base_url: str | None,
    api_key: str | Unset | None = UNSET,
) -> Organization:
    """The organization's own upstream, for its models that name none (None: no upstream of
    its own). The key is write-only: UNSET keeps the one saved."""
    checked = None if base_url is None else _check_base_url(base_url)
    org = await lock_for_change(session, act, org_id)
    org.upstream_base_url = checked
    if not isinstance(api_key, Unset):
        org.upstream_api_key = None if api_key is None else _check_key(api_key)
    if checked is None:
        org.upstream_api_key = None
    org.updated_at = act.now
    details = {"base_url": checked, "api_key_set": org.upstream_api_key is not None}
    record(session, act, org, "upstream_changed", details=details)
    return org
