"""Import and export the user table as CSV. The rules live in `user.csv_io` (and, for the
allowances, in `allowance.service`): this page uploads, previews and applies."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import InvalidRequest
from tokenadmin.organization import service as organization_service
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind
from tokenadmin.user import csv_io
from tokenadmin.user.csv_schemas import MAX_IMPORT_BYTES, ImportResult
from tokenadmin.user.endpoints import users_csv

router = APIRouter(include_in_schema=False)
MAX_UPLOAD_BYTES = MAX_IMPORT_BYTES
PREVIEW_ROWS = 500
COLUMN_WORDS = {
    "max_tokens": ALLOWANCE_LABEL[Kind.inference],
    "max_train_tokens": ALLOWANCE_LABEL[Kind.training],
    "name": "Name",
    "role": "Role",
}
"""The preview's words for the columns an import changes (the file's own headers are codes)."""


async def _page(request: Request, org_id: uuid.UUID, **context: Any) -> dict[str, Any]:
    db, now = db_of(request), clock_of(request).now()

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now)
        return {
            "org": org,
            "balance": balance,
            "tz": ZoneInfo(org.time_zone),
            "column_words": COLUMN_WORDS,
        }

    return {**await db.read(load), **context}


@router.get("/orgs/{org_id}/import")
async def import_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    created: Annotated[int | None, Query(ge=0)] = None,
    changed: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    await organization_service.up_to_date(db_of(request), org_id, clock_of(request).now())
    notice = None
    if created is not None and changed is not None:
        notice = f"Imported: {created:,} new users, {changed:,} users changed."
    context = await _page(request, org_id, notice=notice, columns=csv_io.IMPORT_COLUMNS)
    return render(request, "transfer.html", viewer, **context)


async def _uploaded(file: UploadFile) -> str:
    content = await file.read(MAX_UPLOAD_BYTES + 1)
    if len(content) > MAX_UPLOAD_BYTES:
        raise InvalidRequest(
            f"The file is larger than {MAX_UPLOAD_BYTES // 1024 // 1024} MB; split it.",
            code="invalid_csv",
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(
            "The file is not UTF-8 text; save it as “CSV UTF-8” and upload it again.",
            code="invalid_csv",
        ) from error


@router.post("/orgs/{org_id}/import")
async def import_csv(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    action: Annotated[Literal["preview", "apply"], Form()] = "preview",
    file: UploadFile | None = None,
    csv_text: Annotated[str, Form(max_length=MAX_UPLOAD_BYTES)] = "",
) -> Response:
    require_org(viewer, org_id, "admin")
    db = db_of(request)
    try:
        text = await _uploaded(file) if file is not None and file.filename else csv_text
        rows = csv_io.read_upload(text)
    except InvalidRequest as error:
        context = await _page(
            request, org_id, error=error.message, csv_text=csv_text, columns=csv_io.IMPORT_COLUMNS
        )
        return render(request, "transfer.html", viewer, status_code=422, **context)

    async def work(session: AsyncSession) -> ImportResult:
        act = Act(viewer.principal.actor, clock_of(request).now())
        return await csv_io.import_users(session, act, org_id, rows, dry_run=action != "apply")

    result = await db.write(work)
    if result.applied:
        target = (
            f"/orgs/{org_id}/import?created={len(result.new_users)}&changed={result.changed_users}"
        )
        return RedirectResponse(target, status_code=303)
    context = await _page(
        request,
        org_id,
        result=result,
        action=action,
        csv_text=text,
        columns=csv_io.IMPORT_COLUMNS,
        preview_rows=PREVIEW_ROWS,
    )
    return render(
        request, "transfer.html", viewer, status_code=200 if result.accepted else 422, **context
    )


@router.get("/orgs/{org_id}/export.csv")
async def export_csv(request: Request, org_id: uuid.UUID, viewer: ViewerDep) -> Response:
    require_org(viewer, org_id, "admin")
    return await users_csv(db_of(request), org_id, clock_of(request).now())
