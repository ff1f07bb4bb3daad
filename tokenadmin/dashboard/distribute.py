"""Distribute the balance, one kind at a time: the form read into the request of
`distribution.service`, which computes the preview and applies it (as the API and the CLI
do); this page only reads the form and renders the preview."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org, up_to_date
from tokenadmin.deps import clock_of, db_of
from tokenadmin.distribution import service as distribution_service
from tokenadmin.distribution.schemas import DistributionRequest, Method
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
PICK_LIMIT = 100
PREVIEW_ROWS = 200


@dataclass
class DistributionForm:
    """What the administrator asked for, as typed, and the problems with it."""

    kind: Kind = Kind.inference
    method: Method = "equal"
    amount: str = ""
    share: str = ""
    minimum: str = ""
    maximum: str = ""
    scope: Literal["all", "selected"] = "all"
    user_ids: list[uuid.UUID] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def number(self, name: str, *, required: bool, positive: bool = False) -> int | None:
        text = getattr(self, name)
        if not text.strip() and not required:
            return None
        try:
            return parse_amount(text, positive=positive)
        except ValueError as error:
            self.errors[name] = str(error)
            return None


def read_request(form: DistributionForm) -> DistributionRequest | None:
    """The form as the service's request (one kind at a time), or None with its problems
    in `form.errors`, each by its field."""
    fixed = form.number("amount", required=form.method == "fixed", positive=True)
    share = None
    if form.method == "percent":
        text = form.share.strip().removesuffix("%").strip()
        if text.isascii() and text.isdigit() and 1 <= int(text) <= 100:
            share = int(text)
        else:
            form.errors["share"] = "The percentage is a whole number from 1 to 100."
    minimum = form.number("minimum", required=False) or 0
    maximum = form.number("maximum", required=False)
    if maximum is not None and maximum < minimum:
        form.errors["maximum"] = "The maximum is below the minimum."
    if form.scope == "selected" and not form.user_ids:
        form.errors["users"] = "Choose at least one user, or distribute over all active users."
    if form.errors:
        return None
    rule = {
        "method": form.method,
        "amount": fixed if form.method == "fixed" else None,
        "percent": share,
        "minimum": minimum,
        "maximum": maximum,
    }
    users = [str(i) for i in form.user_ids] if form.scope == "selected" else None
    try:
        return DistributionRequest.model_validate({form.kind.value: rule, "users": users})
    except ValidationError as error:  # more users chosen than one distribution takes
        form.errors["users"] = str(error.errors()[0]["msg"])
        return None


async def _pickable(
    session: AsyncSession, org: Organization, q: str, chosen: list[uuid.UUID]
) -> list[User]:
    """Active users matching the search, and those already chosen."""
    query = user_repository.UserQuery(
        org_id=org.id,
        period_start=org.period_start,
        search=q or None,
        status="active",
        sort="email",
        limit=PICK_LIMIT,
    )
    users, _total = await user_repository.search(session, query)
    found = {u.id: u for u in users}
    missing = [i for i in chosen if i not in found]
    if missing:
        for user in await user_repository.find_in_org(session, org.id, ids=missing):
            found[user.id] = user
    return sorted(found.values(), key=lambda u: u.email)


@router.get("/orgs/{org_id}/distribute")
async def distribute_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    q: Annotated[Text, Query(max_length=200)] = "",
    done: Annotated[int | None, Query(ge=0)] = None,
    each: Annotated[int | None, Query(ge=0)] = None,
    kind: Kind = Kind.inference,
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    db, now = await up_to_date(request, org_id)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now)
        return {"org": org, "balance": balance, "pickable": await _pickable(session, org, q, [])}

    notice = None
    if done is not None and each is not None:
        notice = f"Added {each:,} {ALLOWANCE_LABEL[kind]} to each of {done:,} users."
    data = await db.read(load)
    return render(
        request,
        "distribute.html",
        viewer,
        **data,
        form=DistributionForm(kind=kind),
        q=q,
        notice=notice,
        tz=ZoneInfo(data["org"].time_zone),
    )


@router.post("/orgs/{org_id}/distribute")
async def distribute(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    action: Annotated[Literal["preview", "apply"], Form()] = "preview",
    kind: Annotated[Kind, Form()] = Kind.inference,
    method: Annotated[Method, Form()] = "equal",
    amount: Annotated[str, Form(max_length=64)] = "",
    share: Annotated[str, Form(max_length=8)] = "",
    minimum: Annotated[str, Form(max_length=64)] = "",
    maximum: Annotated[str, Form(max_length=64)] = "",
    scope: Annotated[Literal["all", "selected"], Form()] = "all",
    users: Annotated[list[uuid.UUID] | None, Form()] = None,
    digest: Annotated[str, Form(max_length=64)] = "",
    q: Annotated[Text, Form(max_length=200)] = "",
) -> Response:
    require_org(viewer, org_id, "admin")
    db = db_of(request)
    form = DistributionForm(kind, method, amount, share, minimum, maximum, scope, users or [])
    asked = read_request(form)

    async def work(session: AsyncSession) -> dict[str, Any]:
        act = Act(viewer.principal.actor, clock_of(request).now())
        org = await organization_service.lock_for_change(session, act, org_id)
        result: dict[str, Any] = {"org": org, "applied": False}
        if asked is not None:
            try:
                found = await distribution_service.preview(session, act, org, asked)
            except distribution_service.NoActiveUsers:
                form.errors["users"] = "There is no active user to distribute to."
            else:
                if action == "apply" and found.accepted:
                    try:
                        await distribution_service.commit(session, act, found, digest)
                        result["applied"] = True
                    except distribution_service.PreviewStale:
                        result["stale"] = True
                answer = found.out()
                if any(r["code"] == "user_not_found" for r in answer.refused):
                    form.errors["users"] = "Some chosen users are not in this organization."
                changes = answer.kinds[kind.value].rows
                result.update(
                    preview={"refused": answer.refused, "changes": changes},
                    accepted=answer.accepted,
                    per_user=found.per_user[kind],
                    user_count=answer.users,
                    balance_before=answer.kinds[kind.value].balance_before,
                    balance_after=answer.kinds[kind.value].balance_after,
                    digest=answer.preview_token,
                )
        result["balance"] = await organization_service.balance(session, org, act.now)
        result["pickable"] = await _pickable(session, org, q, form.user_ids)
        return result

    result = await db.write(work)
    if result["applied"]:
        target = (
            f"/orgs/{org_id}/distribute?done={result['user_count']}"
            f"&each={result['per_user']}&kind={kind.value}"
        )
        return RedirectResponse(target, status_code=303)
    return render(
        request,
        "distribute.html",
        viewer,
        status_code=422 if form.errors or (action == "apply" and not result.get("stale")) else 200,
        **result,
        form=form,
        q=q,
        action=action,
        rows=result.get("preview", {}).get("changes", [])[:PREVIEW_ROWS],
        tz=ZoneInfo(result["org"].time_zone),
    )
