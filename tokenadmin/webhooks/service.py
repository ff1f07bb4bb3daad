"""Webhook endpoints of an organization and the log of their deliveries.

Decisions of this module:
- A URL is https, or http to a loopback host (127.0.0.1, ::1, localhost) for a receiver on
  the same machine: events and their signatures cross no network in clear text. No user
  name or password in it (they would show in every list), no fragment; at most 2,000
  characters. Refusal: `invalid_webhook_url`.
- Kinds are the event kinds (events.service.KINDS); none listed sends every kind, new ones
  included. Refusal: `unknown_event_kind`.
- At most MAX_ENDPOINTS per organization (`too_many_webhooks`): each event is POSTed once
  per endpoint.
- The secret (`whsec_` + 32 random bytes, URL-safe base64) is answered once, when the
  endpoint is made or its secret rotated. The server keeps it, since it signs with it; it
  is never answered, logged or journaled afterwards.
- A resend starts a new sequence of attempts of a delivered or failed delivery (a pending
  one is still being tried): due at once, retried for a day again.
- Services never commit; the caller's request or command does.
"""

from __future__ import annotations

import ipaddress
import secrets
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.act import Act
from tokenadmin.errors import Conflict, InvalidRequest, NotFound
from tokenadmin.events.service import KINDS
from tokenadmin.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tokenadmin.webhooks import repository
from tokenadmin.webhooks.schemas import (
    AttemptOut,
    DeliveryOut,
    DeliveryPage,
    WebhookOut,
    WebhookSecretOut,
)

MAX_ENDPOINTS = 20
SECRET_PREFIX = "whsec_"
LOOPBACK_NAMES = {"localhost", "localhost."}


class InvalidWebhookUrl(InvalidRequest, code="invalid_webhook_url"):
    """A webhook URL that is not https (or http to a loopback host), or not a URL."""


class UnknownEventKind(InvalidRequest, code="unknown_event_kind"):
    """An event kind that does not exist."""


class TooManyWebhooks(Conflict, code="too_many_webhooks"):
    """An organization has the most webhook endpoints it may have."""


class DeliveryPending(Conflict, code="delivery_pending"):
    """A resend of a delivery that is still being tried."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> str:
    """The URL, trimmed, when events may be sent to it."""
    cleaned = url.strip()
    try:
        parts = urlsplit(cleaned)
        parts.port  # noqa: B018 -- reading it checks the port is a number in range
    except ValueError as error:
        raise InvalidWebhookUrl(
            f"'{cleaned}' is not a URL: {error}.", details={"field": "url"}
        ) from error
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidWebhookUrl(
            f"'{cleaned}' is not an http(s) URL with a host, such as"
            " https://hooks.example.com/tokenadmin.",
            details={"field": "url"},
        )
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise InvalidWebhookUrl(
            "Webhooks are sent over https; http only to 127.0.0.1, ::1 or localhost"
            f" (a receiver on this machine), not to {parts.hostname}.",
            details={"field": "url"},
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl(
            "Leave the user name and password out of the URL: receivers check the"
            " signature instead.",
            details={"field": "url"},
        )
    if parts.fragment:
        raise InvalidWebhookUrl("Leave the #fragment out of the URL.", details={"field": "url"})
    if len(cleaned) > 2000:
        raise InvalidWebhookUrl(
            "The URL is longer than 2,000 characters.", details={"field": "url"}
        )
    return cleaned


def check_kinds(kinds: list[str] | None) -> list[str] | None:
    """The kinds, without repeats, in the order given; None (every kind) for none."""
    if not kinds:
        return None
    chosen: list[str] = []
    for kind in (k.strip() for k in kinds):
        if kind not in KINDS:
            raise UnknownEventKind(
                f"'{kind}' is no event kind; the kinds are {', '.join(KINDS)}.",
                details={"field": "kinds", "kind": kind},
            )
        if kind not in chosen:
            chosen.append(kind)
    return chosen


def _description(text: str | None) -> str | None:
    return (text or "").strip() or None


async def get(session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    """The organization's endpoint; another organization's does not exist."""
    endpoint = await repository.get_endpoint(session, endpoint_id)
    if endpoint is None or endpoint.org_id != org_id:
        raise NotFound("Webhook not found.", code="webhook_not_found")
    return endpoint


async def _locked(
    session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    endpoint = await repository.lock_endpoint(session, endpoint_id)
    if endpoint is None or endpoint.org_id != org_id:
        raise NotFound("Webhook not found.", code="webhook_not_found")
    return endpoint


async def list_endpoints(session: AsyncSession, org_id: uuid.UUID) -> list[WebhookOut]:
    return [WebhookOut.of(e) for e in await repository.endpoints_of(session, org_id)]


async def create(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    *,
    url: str,
    kinds: list[str] | None = None,
    enabled: bool = True,
    description: str | None = None,
) -> WebhookSecretOut:
    """A new endpoint of the organization (locked by the caller), with its secret, once."""
    checked_url = check_url(url)
    checked_kinds = check_kinds(kinds)
    if await repository.count_endpoints(session, org_id) >= MAX_ENDPOINTS:
        raise TooManyWebhooks(
            f"An organization has at most {MAX_ENDPOINTS} webhooks; remove one first.",
            details={"limit": MAX_ENDPOINTS},
        )
    endpoint = WebhookEndpoint(
        id=uuid7(),
        org_id=org_id,
        url=checked_url,
        kinds=checked_kinds,
        enabled=enabled,
        description=_description(description),
        secret=new_secret(),
        created_at=act.now,
        created_by=act.actor,
        sends_since=act.now,
        updated_at=act.now,
    )
    session.add(endpoint)
    await session.flush()
    return WebhookSecretOut(**WebhookOut.of(endpoint).model_dump(), secret=endpoint.secret)


@dataclass(frozen=True)
class Change:
    """Fields to change; None leaves one as it is (kinds=[] sends every kind)."""

    url: str | None = None
    kinds: list[str] | None = None
    enabled: bool | None = None
    description: str | None = None


async def update(
    session: AsyncSession, act: Act, org_id: uuid.UUID, endpoint_id: uuid.UUID, change: Change
) -> WebhookOut:
    endpoint = await _locked(session, org_id, endpoint_id)
    if change.url is not None:
        endpoint.url = check_url(change.url)
    if change.kinds is not None:
        endpoint.kinds = check_kinds(change.kinds)
    if change.description is not None:
        endpoint.description = _description(change.description)
    if change.enabled is not None:
        if change.enabled and not endpoint.enabled:
            endpoint.sends_since = act.now  # the events of its time off are skipped
        endpoint.enabled = change.enabled
    endpoint.updated_at = act.now
    await session.flush()
    return WebhookOut.of(endpoint)


async def rotate_secret(
    session: AsyncSession, act: Act, org_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookSecretOut:
    """A new secret, answered once; attempts from now on are signed with it."""
    endpoint = await _locked(session, org_id, endpoint_id)
    endpoint.secret = new_secret()
    endpoint.updated_at = act.now
    await session.flush()
    return WebhookSecretOut(**WebhookOut.of(endpoint).model_dump(), secret=endpoint.secret)


async def delete(session: AsyncSession, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookOut:
    """Remove the endpoint, with its delivery log; what it was."""
    endpoint = await _locked(session, org_id, endpoint_id)
    removed = WebhookOut.of(endpoint)
    await repository.delete_endpoint(session, endpoint_id)
    return removed


def delivery_out(
    delivery: WebhookDelivery, event: Event, attempts: list[WebhookAttempt]
) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_kind=event.kind,
        event_message=event.message,
        state=delivery.state,
        sequence=delivery.sequence,
        attempts=delivery.attempts,
        first_attempt_at=delivery.first_attempt_at,
        next_attempt_at=delivery.next_attempt_at,
        last_status_code=delivery.last_status_code,
        created_at=delivery.created_at,
        finished_at=delivery.finished_at,
        attempt_log=[AttemptOut.of(a) for a in attempts],
    )


async def deliveries(
    session: AsyncSession,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    state: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> DeliveryPage:
    """An endpoint's deliveries, newest first, each with its attempts."""
    await get(session, org_id, endpoint_id)
    rows, total = await repository.deliveries_of(session, endpoint_id, state, limit, offset)
    attempts = await repository.attempts_of(session, [d.id for d, _ in rows])
    return DeliveryPage(
        deliveries=[delivery_out(d, e, attempts[d.id]) for d, e in rows], total=total
    )


async def org_of_delivery(session: AsyncSession, delivery_id: uuid.UUID) -> uuid.UUID:
    found = await repository.get_delivery(session, delivery_id)
    if found is None:
        raise NotFound("Delivery not found.", code="delivery_not_found")
    return found[0].org_id


async def endpoint_of_delivery(
    session: AsyncSession, org_id: uuid.UUID, delivery_id: uuid.UUID
) -> uuid.UUID:
    found = await repository.get_delivery(session, delivery_id)
    if found is None or found[0].org_id != org_id:
        raise NotFound("Delivery not found.", code="delivery_not_found")
    return found[0].endpoint_id


async def resend(
    session: AsyncSession, act: Act, org_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryOut:
    """Send a delivered or failed delivery again: a new sequence of attempts, due now."""
    delivery = await repository.lock_delivery(session, delivery_id)
    if delivery is None or delivery.org_id != org_id:
        raise NotFound("Delivery not found.", code="delivery_not_found")
    if delivery.state == "pending":
        raise DeliveryPending(
            "This delivery is still being tried; it can be sent again once it was delivered"
            " or given up.",
            details={"delivery_id": str(delivery.id)},
        )
    delivery.state = "pending"
    delivery.sequence += 1
    delivery.attempts = 0
    delivery.first_attempt_at = None
    delivery.next_attempt_at = act.now
    delivery.finished_at = None
    await session.flush()
    found = await repository.get_delivery(session, delivery_id)
    assert found is not None
    attempts = await repository.attempts_of(session, [delivery_id])
    return delivery_out(found[0], found[1], attempts[delivery_id])
