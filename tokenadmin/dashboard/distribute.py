"""Distribute the balance: the same amount added to each chosen user's allowance, computed
as an equal split, a fixed amount or a percentage of the balance, between a minimum and a
maximum per user. Previewed first, then applied as one atomic allowance change."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.amounts import parse_amount
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org
from tokenadmin.deps import clock_of, db_of
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
PICK_LIMIT = 100
PREVIEW_ROWS = 200
MAX_USERS = 200_000
Method = Literal["equal", "fixed", "percent"]
KIND_NAMES = {Kind.inference: "Max Tokens", Kind.training: "Max Train Tokens"}


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


@dataclass
class Amounts:
    fixed: int | None
    share: int | None
    minimum: int
    maximum: int | None


def read_amounts(form: DistributionForm) -> Amounts | None:
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
    return Amounts(fixed, share, minimum, maximum)


def amount_per_user(method: Method, balance: int, users: int, amounts: Amounts) -> int:
    """Integers only: an equal split leaves the remainder in the balance."""
    available = max(0, balance)
    if method == "fixed":
        per_user = amounts.fixed or 0
    elif method == "percent":
        per_user = available * (amounts.share or 0) // 100 // users
    else:
        per_user = available // users
    per_user = max(per_user, amounts.minimum)
    if amounts.maximum is not None:
        per_user = min(per_user, amounts.maximum)
    return per_user


def _digest(kind: Kind, requests: list[allowance_service.Request]) -> str:
    """Names exactly what a preview showed, so Apply writes that or nothing."""
    text = "|".join(
        f"{r.user.id}:{r.user.version}:{r.user.allowance(kind)}:{r.allowances[kind]}"
        for r in requests
    )
    return hashlib.sha256(f"{kind}|{text}".encode()).hexdigest()


async def _users(session: AsyncSession, org: Organization, form: DistributionForm) -> list[User]:
    if form.scope == "selected":
        return list(await user_repository.find_in_org(session, org.id, ids=form.user_ids))
    query = user_repository.UserQuery(
        org_id=org.id, period_start=org.period_start, status="active", sort="email", limit=MAX_USERS
    )
    users, _total = await user_repository.search(session, query)
    return list(users)


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
    db, now = db_of(request), clock_of(request).now()
    await organization_service.up_to_date(db, org_id, now)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now)
        return {"org": org, "balance": balance, "pickable": await _pickable(session, org, q, [])}

    notice = None
    if done is not None and each is not None:
        notice = f"Added {each:,} {KIND_NAMES[kind]} to each of {done:,} users."
    data = await db.read(load)
    return render(
        request,
        "distribute.html",
        viewer,
        **data,
        form=DistributionForm(kind=kind),
        q=q,
        notice=notice,
        kind_names=KIND_NAMES,
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
    amounts = read_amounts(form)

    async def work(session: AsyncSession) -> dict[str, Any]:
        act = Act(viewer.principal.actor, clock_of(request).now())
        org = await organization_service.lock_for_change(session, act, org_id)
        result: dict[str, Any] = {"org": org, "applied": False}
        if amounts is not None:
            chosen = await _users(session, org, form)
            if not chosen:
                form.errors["users"] = "There is no active user to distribute to."
            else:
                before = org.capacity(kind) - org.allocated(kind)
                per_user = amount_per_user(method, before, len(chosen), amounts)
                requests = [
                    allowance_service.Request(
                        u, {kind: u.allowance(kind) + per_user}, expected_version=u.version
                    )
                    for u in chosen
                ]
                plan = allowance_service.plan(org, requests, act)
                result.update(
                    preview=allowance_service.preview(plan),
                    accepted=plan.accepted,
                    per_user=per_user,
                    user_count=len(chosen),
                    balance_before=before,
                    balance_after=plan.after[kind].balance,
                    digest=_digest(kind, requests),
                )
                if action == "apply" and plan.accepted:
                    if digest != result["digest"]:
                        result["stale"] = True
                    else:
                        await allowance_service.apply(
                            session, act, org, plan, reason=f"Distribution ({method})"
                        )
                        result["applied"] = True
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
        kind_names=KIND_NAMES,
        rows=result.get("preview", {}).get("changes", [])[:PREVIEW_ROWS],
        tz=ZoneInfo(result["org"].time_zone),
    )
