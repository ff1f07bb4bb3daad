"""The Webhooks page of an organization (its administrators and operators): add an endpoint
(its signing secret shown once, on the answer to the form), list them, turn one off or on,
rotate its secret, remove it; and each endpoint's delivery log, every attempt with its
answer, with a Resend button per delivered or failed delivery.

Thin callers of webhooks.service, one transaction per form.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound, TokenAdminError
from tokenadmin.events.service import KINDS
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.webhooks import service
from tokenadmin.webhooks.schemas import WebhookSecretOut

router = APIRouter(include_in_schema=False)
SHOWN = 50
"""Deliveries shown on an endpoint's log, newest first."""
NOTICES = {
    "resent": "The delivery is due again: it is sent within seconds.",
    "removed": "The webhook is removed, with its delivery log.",
    "enabled": "The webhook is on: new events are sent to it.",
    "disabled": "The webhook is off: nothing is sent to it until it is on again.",
}


def _act(request: Request, viewer: Viewer) -> Act:
    return Act(viewer.principal.actor, clock_of(request).now())


async def _list_page(
    request: Request, org_id: uuid.UUID, viewer: Viewer, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        return {"org": org, "hooks": await service.list_endpoints(session, org_id)}

    data = await db_of(request).read(load)
    return render(
        request,
        "webhooks.html",
        viewer,
        status_code=status_code,
        kinds=KINDS,
        tz=ZoneInfo(data["org"].time_zone),
        **data,
        **context,
    )


async def _log_page(
    request: Request,
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    viewer: Viewer,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        hook = await service.get(session, org_id, webhook_id)
        page = await service.deliveries(session, org_id, webhook_id, limit=SHOWN)
        return {"org": org, "hook": hook, "page": page}

    data = await db_of(request).read(load)
    return render(
        request,
        "webhook_deliveries.html",
        viewer,
        status_code=status_code,
        tz=ZoneInfo(data["org"].time_zone),
        **data,
        **context,
    )


async def _write(
    request: Request,
    work: Callable[[AsyncSession], Awaitable[Any]],
    refused: Callable[[TokenAdminError], Awaitable[Response]],
) -> Any:
    """One form's write; refused (but not missing), the page again through `refused`."""
    try:
        return await db_of(request).write(work)
    except NotFound:
        raise
    except TokenAdminError as error:
        return await refused(error)


@router.get("/orgs/{org_id}/webhooks")
async def webhooks_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    return await _list_page(request, org_id, viewer, notice=NOTICES.get(notice))


@router.post("/orgs/{org_id}/webhooks")
async def add_webhook(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    url: Annotated[Text, Form(max_length=2000)],
    description: Annotated[Text, Form(max_length=200)] = "",
    kind: Annotated[list[str] | None, Form(max_length=50)] = None,
) -> Response:
    """Add an endpoint; the answer is the page with its secret, shown this once."""
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> WebhookSecretOut:
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        return await service.create(
            session, act, org.id, url=url, kinds=kind or None, description=description
        )

    def refused(error: TokenAdminError) -> Awaitable[Response]:
        form = {"url": url, "description": description, "kinds": kind or []}
        return _list_page(
            request,
            org_id,
            viewer,
            status_code=error.status_code,
            add_error=error.message,
            form=form,
        )

    made = await _write(request, work, refused)
    if isinstance(made, Response):
        return made
    # The secret is in this answer only: the list and the log never show it.
    return await _list_page(request, org_id, viewer, new_secret=made)


@router.get("/orgs/{org_id}/webhooks/{webhook_id}")
async def webhook_log_page(
    request: Request,
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    return await _log_page(request, org_id, webhook_id, viewer, notice=NOTICES.get(notice))


@router.post("/orgs/{org_id}/webhook-deliveries/{delivery_id}/resend")
async def resend_delivery(
    request: Request,
    org_id: uuid.UUID,
    delivery_id: uuid.UUID,
    viewer: WriterDep,
) -> Response:
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> uuid.UUID:
        done = await service.resend(session, _act(request, viewer), org_id, delivery_id)
        return done.endpoint_id

    try:
        webhook_id = await db_of(request).write(work)
    except NotFound:
        raise
    except TokenAdminError as error:
        webhook_id = await db_of(request).read(
            lambda session: service.endpoint_of_delivery(session, org_id, delivery_id)
        )
        return await _log_page(
            request,
            org_id,
            webhook_id,
            viewer,
            status_code=error.status_code,
            log_error=error.message,
        )
    return RedirectResponse(
        f"/orgs/{org_id}/webhooks/{webhook_id}?notice=resent#delivery-{delivery_id}",
        status_code=303,
    )


@router.post("/orgs/{org_id}/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(
    request: Request, org_id: uuid.UUID, webhook_id: uuid.UUID, viewer: WriterDep
) -> Response:
    """A new secret, shown on this answer only."""
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> WebhookSecretOut:
        return await service.rotate_secret(session, _act(request, viewer), org_id, webhook_id)

    rotated = await db_of(request).write(work)
    return await _list_page(request, org_id, viewer, new_secret=rotated, rotated=True)


@router.post("/orgs/{org_id}/webhooks/{webhook_id}/enabled")
async def set_enabled(
    request: Request,
    org_id: uuid.UUID,
    webhook_id: uuid.UUID,
    viewer: WriterDep,
    enabled: Annotated[bool, Form()],
) -> Response:
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> None:
        change = service.Change(enabled=enabled)
        await service.update(session, _act(request, viewer), org_id, webhook_id, change)

    await db_of(request).write(work)
    notice = "enabled" if enabled else "disabled"
    return RedirectResponse(f"/orgs/{org_id}/webhooks?notice={notice}", status_code=303)


@router.post("/orgs/{org_id}/webhooks/{webhook_id}/remove")
async def remove_webhook(
    request: Request, org_id: uuid.UUID, webhook_id: uuid.UUID, viewer: WriterDep
) -> Response:
    require_org(viewer, org_id, "admin")
    await db_of(request).write(lambda session: service.delete(session, org_id, webhook_id))
    return RedirectResponse(f"/orgs/{org_id}/webhooks?notice=removed", status_code=303)
