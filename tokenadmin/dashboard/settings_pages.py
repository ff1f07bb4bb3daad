"""Organization settings: time zone, period, minimums, overallocation and the auto-approval
rule of token requests; API keys."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.principal import SCOPES
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.notifications import alert_settings
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org, up_to_date
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import InvalidRequest, TokenAdminError
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text

router = APIRouter(include_in_schema=False)
NOTICES = {
    "policy": "The settings are saved.",
    "revoked": "The API key is revoked; it no longer works.",
}
SCOPE_HELP = {
    "usage": "records usage and reservations (the platform's back end)",
    "read": "reads users, balances and the journal",
    "admin": "changes users, allowances and settings",
}


async def _settings_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: Viewer,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    db, now = db_of(request), clock_of(request).now()

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        return {
            "org": org,
            "keys": await api_key_service.list_keys(session, org_id),
            "purchases": await organization_service.list_purchases(session, org),
            "balance": await organization_service.balance(session, org, now),
            "tz": ZoneInfo(org.time_zone),
        }

    return render(
        request,
        "settings.html",
        viewer,
        status_code=status_code,
        **{"scopes": SCOPES, "scope_help": SCOPE_HELP, **await db.read(load), **context},
    )


@router.get("/orgs/{org_id}/settings")
async def settings_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    await up_to_date(request, org_id)
    return await _settings_page(request, org_id, viewer, notice=NOTICES.get(notice))


@router.post("/orgs/{org_id}/settings/policy")
async def save_policy(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    name: Annotated[Text, Form(min_length=1, max_length=200)],
    time_zone: Annotated[str, Form(max_length=64)],
    period: Annotated[Literal["monthly", "none"], Form()],
    min_inference: Annotated[str, Form(max_length=64)],
    min_training: Annotated[str, Form(max_length=64)],
    overallocation: Annotated[bool, Form()] = False,
    auto_approve_enabled: Annotated[bool, Form()] = False,
    auto_approve_max_amount: Annotated[str, Form(max_length=64)] = "",
    auto_approve_max_per_period: Annotated[str, Form(max_length=64)] = "",
    auto_approve_max_allocated_percent: Annotated[str, Form(max_length=64)] = "",
    alert_thresholds: Annotated[str | None, Form(max_length=200)] = None,
    alert_balance_below_percent: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    require_org(viewer, org_id, "admin")
    try:
        changes = {
            "name": name.strip(),
            "time_zone": time_zone.strip(),
            "period": period,
            "min_inference": parse_amount(min_inference),
            "min_training": parse_amount(min_training),
            "overallocation": overallocation,
        }
    except ValueError as error:
        return await _settings_page(
            request, org_id, viewer, status_code=422, policy_error=f"Minimums: {error}"
        )
    # A blank number of the auto-approval rule leaves it as it is.
    changes["auto_approve_enabled"] = auto_approve_enabled
    try:
        if auto_approve_max_amount.strip():
            changes["auto_approve_max_amount"] = parse_amount(auto_approve_max_amount)
    except ValueError as error:
        return await _settings_page(
            request,
            org_id,
            viewer,
            status_code=422,
            policy_error=f"Largest request approved at once: {error}",
        )
    for field, text, words in (
        ("auto_approve_max_per_period", auto_approve_max_per_period, "Requests per period"),
        ("auto_approve_max_allocated_percent", auto_approve_max_allocated_percent, "Share"),
    ):
        if not text.strip():
            continue
        try:
            changes[field] = int(text.strip().rstrip("%").strip())
        except ValueError:
            return await _settings_page(
                request,
                org_id,
                viewer,
                status_code=422,
                policy_error=f"{words}: write a whole number, such as 2.",
            )
    try:
        changes |= alert_settings(alert_thresholds, alert_balance_below_percent)
    except ValueError as error:
        return await _settings_page(
            request, org_id, viewer, status_code=422, policy_error=f"Alerts: {error}"
        )

    async def work(session: AsyncSession) -> None:
        act = Act(viewer.principal.actor, clock_of(request).now())
        org = await organization_service.lock_for_change(session, act, org_id)
        await organization_service.update_policy(session, act, org, changes)

    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        return await _settings_page(
            request, org_id, viewer, status_code=error.status_code, policy_error=error.message
        )
    return RedirectResponse(f"/orgs/{org_id}/settings?notice=policy", status_code=303)


@router.post("/orgs/{org_id}/settings/keys")
async def create_key(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    name: Annotated[Text, Form(max_length=200)] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> tuple[str, str]:
        if not name.strip():
            raise InvalidRequest("Give the key a name, such as the service that will use it.")
        act = Act(viewer.principal.actor, clock_of(request).now())
        await organization_service.get(session, org_id)
        key, secret = await api_key_service.create(
            session, act, org_id=org_id, name=name.strip(), scopes=scopes or []
        )
        return key.name, secret

    try:
        key_name, secret = await db_of(request).write(work)
    except TokenAdminError as error:
        return await _settings_page(
            request, org_id, viewer, status_code=error.status_code, key_error=error.message
        )
    # The secret is in this answer only: it is never stored, so it can't be shown again.
    response = await _settings_page(request, org_id, viewer, new_key=(key_name, secret))
    response.headers["cache-control"] = "no-store"
    return response


@router.post("/orgs/{org_id}/settings/keys/{key_id}/revoke")
async def revoke_key(
    request: Request, org_id: uuid.UUID, key_id: uuid.UUID, viewer: WriterDep
) -> Response:
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> None:
        act = Act(viewer.principal.actor, clock_of(request).now())
        await api_key_service.revoke(session, act, org_id, key_id)

    await db_of(request).write(work)
    return RedirectResponse(f"/orgs/{org_id}/settings?notice=revoked", status_code=303)
