"""The journal and audit trail of an organization: filtered, newest first, paged, and as CSV."""

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

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.dashboard.web import ViewerDep, render, require_org
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
) -> HTMLResponse:
    require_org(viewer, org_id, "read")
    db = db_of(request)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        query, problems = await _query(session, org, filters, before_id, PAGE_SIZE + 1)
        entries = list(await journal_repository.list_entries(session, query)) if query else []
        more = len(entries) > PAGE_SIZE
        entries = entries[:PAGE_SIZE]
        return {
            "org": org,
            "entries": entries,
            "emails": await _emails(session, org, entries),
            "problems": problems,
            "older": entries[-1].id if more else None,
        }

    data = await db.read(load)
    params = filters.params()
    return render(
        request,
        "journal.html",
        viewer,
        **data,
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
