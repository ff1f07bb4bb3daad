"""Distribute the balance, both kinds in one preview and one apply: the form read into the
request of `distribution.service`, which computes the preview (with the purchases expiring
soon that it depends on) and applies it, as the API and the CLI do; this page only reads
the form and renders the preview."""

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
from tokenadmin.distribution.schemas import DistributionOut, DistributionRequest, Method
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.schemas import Text
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)
PICK_LIMIT = 100
PREVIEW_ROWS = 200
KindMethod = Literal["none", "equal", "fixed", "percent"]
"""A kind's method on the form: `none` leaves that kind's allowances alone."""
Amount = Annotated[str, Form(max_length=64)]
Share = Annotated[str, Form(max_length=8)]


@dataclass
class KindForm:
    """One kind's rule, as typed."""

    method: KindMethod = "none"
    amount: str = ""
    share: str = ""
    minimum: str = ""
    maximum: str = ""


@dataclass
class DistributionForm:
    """What the administrator asked for, as typed, and the problems with it (by field:
    `inference_amount`, `training_share`, ..., `kinds` and `users`)."""

    kinds: dict[Kind, KindForm] = field(
        default_factory=lambda: {Kind.inference: KindForm("equal"), Kind.training: KindForm()}
    )
    scope: Literal["all", "selected"] = "all"
    user_ids: list[uuid.UUID] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    def number(
        self, kind: Kind, name: str, *, required: bool, positive: bool = False
    ) -> int | None:
        text = getattr(self.kinds[kind], name)
        if not text.strip() and not required:
            return None
        try:
            return parse_amount(text, positive=positive)
        except ValueError as error:
            self.errors[f"{kind}_{name}"] = str(error)
            return None


def _rule(form: DistributionForm, kind: Kind) -> dict[str, Any] | None:
    """One kind's rule for the service, or None when that kind is left alone (or has a
    problem, then in `form.errors`)."""
    typed = form.kinds[kind]
    if typed.method == "none":
        return None
    fixed = form.number(kind, "amount", required=typed.method == "fixed", positive=True)
    share = None
    if typed.method == "percent":
        text = typed.share.strip().removesuffix("%").strip()
        if text.isascii() and text.isdigit() and 1 <= int(text) <= 100:
            share = int(text)
        else:
            form.errors[f"{kind}_share"] = "The percentage is a whole number from 1 to 100."
    minimum = form.number(kind, "minimum", required=False) or 0
    maximum = form.number(kind, "maximum", required=False)
    if maximum is not None and maximum < minimum:
        form.errors[f"{kind}_maximum"] = "The maximum is below the minimum."
    return {
        "method": typed.method,
        "amount": fixed if typed.method == "fixed" else None,
        "percent": share,
        "minimum": minimum,
        "maximum": maximum,
    }


def read_request(form: DistributionForm) -> DistributionRequest | None:
    """The form as the service's request (one kind or both), or None with its problems in
    `form.errors`, each by its field."""
    rules = {kind.value: _rule(form, kind) for kind in Kind}
    if all(form.kinds[kind].method == "none" for kind in Kind):
        form.errors["kinds"] = (
            f"Choose how to distribute {ALLOWANCE_LABEL[Kind.inference]},"
            f" {ALLOWANCE_LABEL[Kind.training]} or both."
        )
    if form.scope == "selected" and not form.user_ids:
        form.errors["users"] = "Choose at least one user, or distribute over all active users."
    if form.errors:
        return None
    users = [str(i) for i in form.user_ids] if form.scope == "selected" else None
    try:
        return DistributionRequest.model_validate({**rules, "users": users})
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


def _notice(users: int, added: dict[Kind, int | None]) -> str:
    """What an apply did, in words: "Added 500,000 Max Tokens and 10,000 Max Train Tokens
    to each of 4 users." """
    parts = [f"{amount:,} {ALLOWANCE_LABEL[kind]}" for kind, amount in added.items() if amount]
    if not parts:
        return f"Nothing was added: each of {users:,} users got 0."
    return f"Added {' and '.join(parts)} to each of {users:,} users."


@router.get("/orgs/{org_id}/distribute")
async def distribute_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    q: Annotated[Text, Query(max_length=200)] = "",
    done: Annotated[int | None, Query(ge=0)] = None,
    inference: Annotated[int | None, Query(ge=0)] = None,
    training: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    db, now = await up_to_date(request, org_id)

    async def load(session: AsyncSession) -> dict[str, Any]:
        org = await organization_service.get(session, org_id)
        balance = await organization_service.balance(session, org, now)
        return {"org": org, "balance": balance, "pickable": await _pickable(session, org, q, [])}

    notice = None
    if done is not None:
        notice = _notice(done, {Kind.inference: inference, Kind.training: training})
    data = await db.read(load)
    return render(
        request,
        "distribute.html",
        viewer,
        **data,
        form=DistributionForm(),
        q=q,
        notice=notice,
        tz=ZoneInfo(data["org"].time_zone),
    )


def _preview_rows(answer: DistributionOut) -> list[dict[str, Any]]:
    """One row per user whose allowances change, both kinds side by side, by email."""
    users: dict[str, dict[str, Any]] = {}
    for kind, distribution in answer.kinds.items():
        for row in distribution.rows:
            user = users.setdefault(row.user_id, {"email": row.email, "kinds": {}})
            user["kinds"][kind] = row
    return sorted(users.values(), key=lambda u: u["email"])


@router.post("/orgs/{org_id}/distribute")
async def distribute(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    action: Annotated[Literal["preview", "apply"], Form()] = "preview",
    inference_method: Annotated[KindMethod | None, Form()] = None,
    inference_amount: Amount = "",
    inference_share: Share = "",
    inference_minimum: Amount = "",
    inference_maximum: Amount = "",
    training_method: Annotated[KindMethod | None, Form()] = None,
    training_amount: Amount = "",
    training_share: Share = "",
    training_minimum: Amount = "",
    training_maximum: Amount = "",
    kind: Annotated[Kind | None, Form()] = None,
    method: Annotated[Method | None, Form()] = None,
    amount: Amount = "",
    share: Share = "",
    minimum: Amount = "",
    maximum: Amount = "",
    scope: Annotated[Literal["all", "selected"], Form()] = "all",
    users: Annotated[list[uuid.UUID] | None, Form()] = None,
    digest: Annotated[str, Form(max_length=64)] = "",
    q: Annotated[Text, Form(max_length=200)] = "",
) -> Response:
    """The form names each kind's rule by prefixed fields (`inference_method`, ...). The
    form of one kind at a time (`kind`, `method`, `amount`, ...), as links and scripts
    made for the earlier page post it, is still read: that kind's rule, the other left
    alone."""
    require_org(viewer, org_id, "admin")
    db = db_of(request)
    if inference_method is None and training_method is None and (method or kind) is not None:
        one = KindForm(method or "equal", amount, share, minimum, maximum)
        kinds = {k: one if k is (kind or Kind.inference) else KindForm() for k in Kind}
    else:
        kinds = {
            Kind.inference: KindForm(
                inference_method or "none",
                inference_amount,
                inference_share,
                inference_minimum,
                inference_maximum,
            ),
            Kind.training: KindForm(
                training_method or "none",
                training_amount,
                training_share,
                training_minimum,
                training_maximum,
            ),
        }
    form = DistributionForm(kinds, scope, users or [])
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
                result.update(answer=answer, per_user=found.per_user)
        result["balance"] = await organization_service.balance(session, org, act.now)
        result["pickable"] = await _pickable(session, org, q, form.user_ids)
        return result

    result = await db.write(work)
    answer: DistributionOut | None = result.get("answer")
    if result["applied"] and answer is not None:
        each = "".join(f"&{k}={v}" for k, v in result["per_user"].items())
        target = f"/orgs/{org_id}/distribute?done={answer.users}{each}"
        return RedirectResponse(target, status_code=303)
    rows = _preview_rows(answer) if answer is not None else []
    return render(
        request,
        "distribute.html",
        viewer,
        status_code=422 if form.errors or (action == "apply" and not result.get("stale")) else 200,
        **result,
        form=form,
        q=q,
        action=action,
        rows=rows[:PREVIEW_ROWS],
        more_rows=max(0, len(rows) - PREVIEW_ROWS),
        tz=ZoneInfo(result["org"].time_zone),
    )
