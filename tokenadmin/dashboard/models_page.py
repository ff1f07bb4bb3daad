"""The Models page of an organization (its administrators and operators): each model's
rates (the organization's own or the platform's), which models its users may call, and the
organization's upstream, whose key is write-only (the page shows only that one is set).

Thin callers of catalog.service, one transaction per form.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.service import Viewer
from tokenadmin.catalog import repository, service
from tokenadmin.catalog.schemas import OrganizationModelsOut
from tokenadmin.catalog.service import parse_rate
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.errors import TokenAdminError
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text

router = APIRouter(include_in_schema=False)
NOTICES = {
    "rates": "The rates are saved.",
    "reset": "The organization's own rates are removed: the platform's apply again.",
    "access": "The models your users may call are saved.",
    "upstream": "The upstream is saved.",
}


async def _page(
    request: Request, org_id: uuid.UUID, viewer: Viewer, *, status_code: int = 200, **context: Any
) -> HTMLResponse:
    settings = settings_of(request)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        models = await service.models_for(session, org_id, settings)
        return {"org": org, "catalog": OrganizationModelsOut.of(org, models)}

    return render(
        request,
        "models.html",
        viewer,
        status_code=status_code,
        **{**await db_of(request).read(load), **context},
    )


async def _write(
    request: Request,
    viewer: Viewer,
    org_id: uuid.UUID,
    change: Any,
    notice: str,
    error_key: str,
) -> Response:
    """One form's change, with the organization's lock; refused, the page says why."""

    async def work(session: AsyncSession) -> None:
        act = Act(viewer.principal.actor, clock_of(request).now())
        await change(session, act)

    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        return await _page(
            request, org_id, viewer, status_code=error.status_code, **{error_key: error.message}
        )
    return RedirectResponse(f"/orgs/{org_id}/models?notice={notice}", status_code=303)


@router.get("/orgs/{org_id}/models")
async def models_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str, Query(max_length=20)] = "",
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    return await _page(request, org_id, viewer, notice=NOTICES.get(notice))


@router.post("/orgs/{org_id}/models/rates")
async def save_rates(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    name: Annotated[Text, Form(max_length=200)],
    prompt_rate: Annotated[str, Form(max_length=40)],
    completion_rate: Annotated[str, Form(max_length=40)],
) -> Response:
    """The organization's own rates of a model; its own upstream of the model stays."""
    require_org(viewer, org_id, "admin")

    async def change(session: AsyncSession, act: Act) -> None:
        prompt = parse_rate(prompt_rate, "Prompt rate")
        completion = parse_rate(completion_rate, "Completion rate")
        service.check_name(name.strip())
        own = await repository.named(session, org_id, name.strip())
        await service.set_model(
            session,
            act,
            org_id,
            name.strip(),
            prompt_rate=prompt,
            completion_rate=completion,
            upstream_base_url=own.upstream_base_url if own else None,
            upstream_model=own.upstream_model if own else None,
            max_output_tokens=own.max_output_tokens if own else None,
        )

    return await _write(request, viewer, org_id, change, "rates", "rates_error")


@router.post("/orgs/{org_id}/models/reset")
async def reset_rates(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    name: Annotated[Text, Form(max_length=200)],
) -> Response:
    """Drop the organization's own rates of a model: the platform's apply again."""
    require_org(viewer, org_id, "admin")

    async def change(session: AsyncSession, act: Act) -> None:
        service.check_name(name.strip())  # before any query: NUL can't reach PostgreSQL
        await service.delete_model(session, act, org_id, name.strip())

    return await _write(request, viewer, org_id, change, "reset", "rates_error")


@router.post("/orgs/{org_id}/models/access")
async def save_access(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    mode: Annotated[Literal["all", "selected"], Form()],
    allowed: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """Every model, or the ones ticked."""
    require_org(viewer, org_id, "admin")
    names = None if mode == "all" else list(allowed or [])

    async def change(session: AsyncSession, act: Act) -> None:
        await service.set_access(session, act, org_id, names)

    return await _write(request, viewer, org_id, change, "access", "access_error")


@router.post("/orgs/{org_id}/models/upstream")
async def save_upstream(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    base_url: Annotated[Text, Form(max_length=500)] = "",
    api_key: Annotated[str, Form(max_length=500)] = "",
    clear_key: Annotated[bool, Form()] = False,
) -> Response:
    """The organization's upstream. The key field is write-only: left blank, the stored key
    stays."""
    require_org(viewer, org_id, "admin")
    key: str | service.Unset | None = service.UNSET
    if clear_key:
        key = None
    elif api_key.strip():
        key = api_key.strip()

    async def change(session: AsyncSession, act: Act) -> None:
        await service.set_upstream(session, act, org_id, base_url.strip() or None, key)

    return await _write(request, viewer, org_id, change, "upstream", "upstream_error")
