"""The journal and audit trail of an organization: filtered, newest first, paged, and as CSV;
its saved allowance changes, each of which can be reverted (previewed, then applied)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import revert as revert_service
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org, up_to_date
from tokenadmin.deps import clock_of, csv_download, db_of
from tokenadmin.errors import NotFound
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.schemas import CHANGES
from tokenadmin.journal.service import ACTIONS, JournalFilter
from tokenadmin.models import JournalEntry, Organization
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository
from tokenadmin.user.service import find_by_ref

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
SAVED_PAGE_SIZE = 10
"""Saved changes listed above the entries, newest first."""
CSV_CHUNK = 1000
CSV_COLUMNS = (
    "id",
    "created_at",
    "actor",
    "action",
    "kind",
    "user",
    "amount",
    "reason",
    *CHANGES,
    "details",
)

Filter = Annotated[Text, Query(max_length=200)]
"""A filter of the journal as typed: text every database can compare (schemas.Text)."""


@dataclass
class Filters:
    user: str = ""
    kind: str = ""
    action: str = ""
    actor: str = ""
    since: str = ""
    until: str = ""

    def params(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


async def _query(
    session: AsyncSession, org: Organization, filters: Filters, before_id: int | None, limit: int
) -> tuple[JournalFilter | None, list[str]]:
    """The repository's filter for the form's values (None: no entry can match), and the
    problems with the values."""
    problems: list[str] = []
    zone = ZoneInfo(org.time_zone)
    user_id = None
    if filters.user:
        try:
            user_id = (await find_by_ref(session, org.id, filters.user)).id
        except NotFound as error:
            problems.append(error.message)
    since_day, until_day = _day(filters.since), _day(filters.until)
    if filters.since and since_day is None:
        problems.append("The From date is not a date (YYYY-MM-DD).")
    if filters.until and until_day is None:
        problems.append("The To date is not a date (YYYY-MM-DD).")
    if problems:
        return None, problems
    return (
        JournalFilter(
            org_id=org.id,
            user_id=user_id,
            kind=Kind(filters.kind) if filters.kind in Kind.__members__ else None,
            action=filters.action or None,
            actor=filters.actor or None,
            since=datetime.combine(since_day, datetime.min.time(), zone) if since_day else None,
            until=(
                datetime.combine(until_day + timedelta(days=1), datetime.min.time(), zone)
                if until_day
                else None
            ),
            before_id=before_id,
            limit=limit,
        ),
        problems,
    )


async def _emails(
    session: AsyncSession, org: Organization, entries: Sequence[JournalEntry]
) -> dict[uuid.UUID, str]:
    ids = sorted({e.user_id for e in entries if e.user_id is not None})
    users = await user_repository.find_in_org(session, org.id, ids=ids) if ids else []
    return {u.id: u.email for u in users}


def _filters(
    user: Filter = "",
    kind: Filter = "",
    action: Filter = "",
    actor: Filter = "",
    since: Filter = "",
    until: Filter = "",
) -> Filters:
    """The filters of the query string, as the page and its CSV download read them."""
    return Filters(user.strip(), kind, action.strip(), actor.strip(), since, until)


FiltersDep = Annotated[Filters, Depends(_filters)]


@router.get("/orgs/{org_id}/journal")
async def journal_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    filters: FiltersDep,
    before_id: Annotated[int | None, Query(ge=1)] = None,
    saved_before: Annotated[str | None, Query(pattern="^[0-9a-f-]{36}$")] = None,
    reverted: Annotated[int | None, Query(ge=0)] = None,
    kept: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db = db_of(request)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        query, problems = await _query(session, org, filters, before_id, PAGE_SIZE + 1)
        entries = list(await journal_repository.list_entries(session, query)) if query else []
        more = len(entries) > PAGE_SIZE
        entries = entries[:PAGE_SIZE]
        saved = await revert_service.batches(
            session, org, before=saved_before, limit=SAVED_PAGE_SIZE + 1
        )
        return {
            "org": org,
            "saved": saved[:SAVED_PAGE_SIZE],
            "older_saved": saved[SAVED_PAGE_SIZE - 1].id if len(saved) > SAVED_PAGE_SIZE else None,
            "entries": entries,
            "emails": await _emails(session, org, entries),
            "problems": problems,
            "older": entries[-1].id if more else None,
        }

    data = await db.read(load)
    params = filters.params()
    notice = None
    if reverted is not None:
        notice = f"Reverted {reverted:,} {'change' if reverted == 1 else 'changes'}."
        if kept:
            notice += f" {kept:,} could not be reverted and stay as they are."
    return render(
        request,
        "journal.html",
        viewer,
        **data,
        notice=notice,
        saved_before=saved_before,
        older_saved_link="?" + urlencode({**params, "saved_before": data["older_saved"]})
        if data["older_saved"]
        else None,
        filters=filters,
        actions=ACTIONS,
        kinds=list(Kind),
        tz=ZoneInfo(data["org"].time_zone),
        before_id=before_id,
        older_link="?" + urlencode({**params, "before_id": data["older"]})
        if data["older"]
        else None,
        newest_link="?" + urlencode(params),
        csv_link=f"/orgs/{org_id}/journal.csv" + ("?" + urlencode(params) if params else ""),
        today=clock_of(request).now().astimezone(ZoneInfo(data["org"].time_zone)).date(),
    )


def _row(entry: JournalEntry, emails: dict[uuid.UUID, str], zone: ZoneInfo) -> list[Any]:
    return [
        entry.id,
        entry.created_at.astimezone(zone).isoformat(),
        entry.actor,
        entry.action,
        entry.kind or "",
        emails.get(entry.user_id, str(entry.user_id)) if entry.user_id else "",
        entry.amount,
        entry.reason or "",
        entry.capacity_delta,
        entry.allocated_delta,
        entry.allowance_delta,
        entry.used_delta,
        entry.reserved_delta,
        *(
            "" if value is None else value
            for value in (
                entry.capacity_after,
                entry.allocated_after,
                entry.allowance_after,
                entry.used_after,
                entry.reserved_after,
            )
        ),
        json.dumps(entry.details, sort_keys=True) if entry.details else "",
    ]


def _safe(value: Any) -> Any:
    """Keep spreadsheets from running a reason such as "=HYPERLINK(...)" as a formula."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


@router.get("/orgs/{org_id}/journal.csv")
async def journal_csv(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    filters: FiltersDep,
) -> Response:
    require_org(viewer, org_id, "read")
    db = db_of(request)
    org = await db.read(lambda session: organization_service.get(session, org_id))
    zone = ZoneInfo(org.time_zone)

    async def chunks(session: AsyncSession) -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        before_id: int | None = None
        while True:  # pages of one snapshot
            query, _problems = await _query(session, org, filters, before_id, CSV_CHUNK)
            entries = await journal_repository.list_entries(session, query) if query else []
            emails = await _emails(session, org, entries)
            for entry in entries:
                writer.writerow([_safe(v) for v in _row(entry, emails, zone)])
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(entries) < CSV_CHUNK:
                return
            before_id = entries[-1].id

    return await csv_download(db, chunks, "journal.csv")


# --- reverting a saved change -----------------------------------------------------------------

BatchId = Annotated[uuid.UUID, Path(description="The id of a saved allowance change.")]


def _act(request: Request, viewer: ViewerDep) -> Act:
    return Act(viewer.principal.actor, clock_of(request).now())


def _revert_page(
    request: Request,
    viewer: ViewerDep,
    org: Organization,
    *,
    plan: revert_service.RevertPlan | None = None,
    problem: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "revert.html",
        viewer,
        status_code=status_code,
        org=org,
        plan=plan,
        problem=problem,
        tz=ZoneInfo(org.time_zone),
    )


@router.get("/orgs/{org_id}/batches/{batch}/revert")
async def revert_preview(
    request: Request, org_id: uuid.UUID, batch: BatchId, viewer: ViewerDep
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    db, now = await up_to_date(request, org_id)
    act = Act(viewer.principal.actor, now)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        try:
            return {
                "org": org,
                "plan": await revert_service.plan_revert(session, act, org, str(batch)),
            }
        except revert_service.AlreadyReverted as error:
            return {"org": org, "problem": error.message, "status_code": error.status_code}

    return _revert_page(request, viewer, **await db.read(load))


@router.post("/orgs/{org_id}/batches/{batch}/revert")
async def revert_apply(
    request: Request,
    org_id: uuid.UUID,
    batch: BatchId,
    viewer: WriterDep,
    preview_token: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    require_org(viewer, org_id, "admin")
    act = _act(request, viewer)

    async def work(session: AsyncSession) -> dict[str, Any]:
        try:
            plan = await revert_service.revert(
                session, act, org_id, str(batch), preview_token=preview_token or None
            )
        except (revert_service.RevertPreviewStale, revert_service.NothingToRevert) as error:
            org = await organization_service.get(session, org_id)
            found = await revert_service.plan_revert(session, act, org, str(batch))
            return {"org": org, "plan": found, "problem": error.message, "status_code": 409}
        except revert_service.AlreadyReverted as error:
            org = await organization_service.get(session, org_id)
            return {"org": org, "problem": error.message, "status_code": error.status_code}
        return {"done": plan}

    result = await db_of(request).write(work)
    done: revert_service.RevertPlan | None = result.pop("done", None)
    if done is None:
        return _revert_page(request, viewer, **result)
    query = urlencode({"reverted": len(done.revertable), "kept": len(done.refused)})
    return RedirectResponse(f"/orgs/{org_id}/journal?{query}", status_code=303)
