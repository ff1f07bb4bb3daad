"""The webhook routes: thin callers of webhooks.service.

Only the organization's administrators (keys with the `admin` scope) and operators reach
them; another organization's webhooks do not exist (404). The secret is in the answers of
create and rotate-secret only.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.audit import AUDITED
from tokenadmin.deps import DatabaseDep, Limit, Offset, PrincipalDep, locked_write
from tokenadmin.errors import NotFound
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service
from tokenadmin.webhooks import service
from tokenadmin.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryState,
    WebhookCreate,
    WebhookOut,
    WebhookSecretOut,
    WebhookUpdate,
)

router = APIRouter(
    prefix="/v1/organizations/{org_id}/webhooks", tags=["webhooks"], dependencies=AUDITED
)

deliveries_router = APIRouter(
    prefix="/v1/webhook-deliveries", tags=["webhooks"], dependencies=AUDITED
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookSecretOut)
async def create_webhook(
    org_id: uuid.UUID, body: WebhookCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Add a webhook endpoint; the answer holds its signing secret, shown this once."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> WebhookSecretOut:
        return await service.create(
            session,
            act,
            org.id,
            url=body.url,
            kinds=body.kinds,
            enabled=body.enabled,
            description=body.description,
        )

    return await locked_write(request, principal, org_id, work, status_code=201)


@router.get("", response_model=list[WebhookOut])
async def list_webhooks(
    org_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> list[WebhookOut]:
    """The organization's webhook endpoints, oldest first (never their secrets)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession) -> list[WebhookOut]:
        await organization_service.get(session, org_id)
        return await service.list_endpoints(session, org_id)

    return await db.read(work)


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(
    org_id: uuid.UUID, webhook_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> WebhookOut:
    """One webhook endpoint (never its secret)."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession) -> WebhookOut:
        return WebhookOut.of(await service.get(session, org_id, webhook_id))

    return await db.read(work)


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def update_webhook(
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    body: WebhookUpdate,
    request: Request,
    principal: PrincipalDep,
) -> JSONResponse:
    """Change a webhook's URL, kinds (an empty list: every kind), description or whether it
    is enabled; a field left out stays as it is."""
    principal.require(org_id, "admin")
    change = service.Change(
        url=body.url, kinds=body.kinds, enabled=body.enabled, description=body.description
    )

    async def work(session: AsyncSession, act: Act, org: Organization) -> WebhookOut:
        return await service.update(session, act, org.id, webhook_id, change)

    return await locked_write(request, principal, org_id, work)


@router.delete("/{webhook_id}", response_model=WebhookOut)
async def delete_webhook(
    org_id: uuid.UUID, webhook_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Remove a webhook endpoint and its delivery log."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> WebhookOut:
        return await service.delete(session, org.id, webhook_id)

    return await locked_write(request, principal, org_id, work)


@router.post("/{webhook_id}/rotate-secret", response_model=WebhookSecretOut)
async def rotate_webhook_secret(
    org_id: uuid.UUID, webhook_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """A new signing secret for the webhook, shown this once; the old one stops signing."""
    principal.require(org_id, "admin")

    async def work(session: AsyncSession, act: Act, org: Organization) -> WebhookSecretOut:
        return await service.rotate_secret(session, act, org.id, webhook_id)

    return await locked_write(request, principal, org_id, work)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def list_deliveries(
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    principal: PrincipalDep,
    db: DatabaseDep,
    state: DeliveryState | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> DeliveryPage:
    """The webhook's deliveries, newest first, each with its attempts and their answers."""
    principal.require(org_id, "admin")
    return await db.read(
        lambda session: service.deliveries(
            session, org_id, webhook_id, state=state, limit=limit, offset=offset
        )
    )


@deliveries_router.post("/{delivery_id}/resend", response_model=DeliveryOut)
async def resend_delivery(
    delivery_id: uuid.UUID, request: Request, principal: PrincipalDep, db: DatabaseDep
) -> JSONResponse:
    """Send a delivered or failed delivery again: a new sequence of attempts, due now."""
    org_id = await db.read(lambda session: service.org_of_delivery(session, delivery_id))
    try:
        principal.require(org_id, "admin")
    except NotFound as error:
        raise NotFound("Delivery not found.", code="delivery_not_found") from error

    async def work(session: AsyncSession, act: Act, org: Organization) -> DeliveryOut:
        return await service.resend(session, act, org.id, delivery_id)

    return await locked_write(request, principal, org_id, work)
