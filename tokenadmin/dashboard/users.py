"""Writes from the admin home: allowances saved as one batch, and user actions.

The rules live in the services (allowance.service, user.service); this module only turns
the page's requests into calls of them, one transaction per request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.allowance.schemas import AllowanceChange
from tokenadmin.amounts import parse_amount
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.home import TableView, home_page
from tokenadmin.dashboard.web import WriterDep, require_org
from tokenadmin.deps import idempotent_write
from tokenadmin.errors import InvalidRequest, TokenAdminError
from tokenadmin.models import Organization, User
from tokenadmin.organization import service as organization_service
from tokenadmin.tokens import ALLOWANCE_FIELD, ALLOWANCE_LABEL
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service
from tokenadmin.user.schemas import UserCreate

router = APIRouter(include_in_schema=False)

ACTIONS = {
    "deactivate": "deactivated",
    "reactivate": "reactivated",
    "make_admin": "admin",
    "make_member": "member",
}
"""The user actions of the table, each with the notice it redirects back with."""


@router.post("/orgs/{org_id}/allowances")
async def save_allowances(
    org_id: uuid.UUID, body: AllowanceChange, request: Request, viewer: WriterDep
) -> JSONResponse:
    """Save the table's pending allowance changes as one atomic batch (or preview them)."""
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession, act: Act) -> dict[str, Any]:
        result = await allowance_service.change(
            session, act, org_id, body.changes, dry_run=body.dry_run, reason=body.reason
        )
        # The page goes on editing these rows: it needs their new versions; and it offers
        # to revert the save it just made, by its batch.
        return {
            **result.preview(),
            "batch": result.batch,
            "users": [_row(user) for user in result.users],
        }

    return await idempotent_write(request, viewer.principal, work)


def _row(user: User) -> dict[str, Any]:
    return {
        "user_id": str(user.id),
        "version": user.version,
        "max_tokens": user.max_tokens,
        "max_train_tokens": user.max_train_tokens,
    }


@dataclass
class ActionForm:
    action: str
    user_ids: list[uuid.UUID]
    view: TableView


async def _action_form(request: Request) -> ActionForm:
    form = await request.form()
    back = form.get("back")
    view = TableView.from_query(back if isinstance(back, str) else "")
    action = form.get("action")
    user_ids = []
    for value in form.getlist("user"):
        try:
            user_ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    return ActionForm(action if isinstance(action, str) else "", user_ids, view)


@router.post("/orgs/{org_id}/users/actions")
async def user_actions(org_id: uuid.UUID, request: Request, viewer: WriterDep) -> Response:
    """Deactivate, reactivate, make admin or make member: every selected user or none."""
    require_org(viewer, org_id, "admin")
    form = await _action_form(request)
    try:
        if form.action not in ACTIONS:
            raise InvalidRequest("Choose an action: deactivate, reactivate, make admin or member.")
        if not form.user_ids:
            raise InvalidRequest("Select at least one user first.")
        changed = await _run_action(request, viewer, org_id, form.action, form.user_ids)
    except TokenAdminError as error:
        return await home_page(
            request, viewer, org_id, form.view, status_code=error.status_code, error=error.message
        )
    notice = ACTIONS[form.action] if changed else "unchanged"
    return _back(org_id, form.view, notice, changed)


async def _run_action(
    request: Request, viewer: Viewer, org_id: uuid.UUID, action: str, user_ids: list[uuid.UUID]
) -> int:
    changed = 0

    async def work(session: AsyncSession, act: Act) -> None:
        nonlocal changed
        org = await organization_service.lock_for_change(session, act, org_id)
        users = await user_repository.find_in_org(session, org_id, ids=user_ids)
        if len(users) != len(set(user_ids)):
            raise InvalidRequest("Some selected users are not in this organization.")
        for user in users:
            changed += await _act_on(session, act, org, viewer, user, action)

    await idempotent_write(request, viewer.principal, work)
    return changed


async def _act_on(
    session: AsyncSession, act: Act, org: Organization, viewer: Viewer, user: User, action: str
) -> int:
    """Apply one action to one user; 0 when they already are that way."""
    if user.id == viewer.user_id and action in ("deactivate", "make_member"):
        # Not a token rule: it keeps an administrator from locking themselves out by a click.
        raise InvalidRequest(
            f"You cannot {'deactivate' if action == 'deactivate' else 'demote'} yourself here;"
            " ask another administrator."
        )
    if action == "deactivate":
        if not user.active:
            return 0
        await user_service.deactivate(session, act, org, user)
    elif action == "reactivate":
        if user.active:
            return 0
        await user_service.reactivate(session, act, org, user)
    else:
        role = "admin" if action == "make_admin" else "member"
        if user.role == role:
            return 0
        await user_service.update(session, act, org, user, role=role)
    return 1


@router.post("/orgs/{org_id}/users")
async def add_user(org_id: uuid.UUID, request: Request, viewer: WriterDep) -> Response:
    """Add a user with the Max Tokens given (the organization's minimum by default)."""
    require_org(viewer, org_id, "admin")
    form = await request.form()
    fields = {
        name: str(form.get(name) or "").strip()
        for name in ("name", "email", "role", "max_tokens", "max_train_tokens", "back")
    }
    view = TableView.from_query(fields["back"])
    try:
        body = _user_create(fields)

        async def work(session: AsyncSession, act: Act) -> None:
            org = await organization_service.lock_for_change(session, act, org_id)
            spec = user_service.NewUser(**body.model_dump())
            await user_service.create(session, act, org, spec)

        await idempotent_write(request, viewer.principal, work)
    except TokenAdminError as error:
        return await home_page(
            request,
            viewer,
            org_id,
            view,
            status_code=error.status_code,
            error=error.message,
            new_user=fields,
        )
    return _back(org_id, TableView(q=body.email), "added", 1)


def _user_create(fields: dict[str, str]) -> UserCreate:
    """The API's own schema checks the form, so both refuse the same things."""
    amounts: dict[str, int | None] = {}
    for kind, name in ALLOWANCE_FIELD.items():
        if not fields[name]:
            amounts[name] = None
            continue
        try:
            amounts[name] = parse_amount(fields[name])
        except ValueError as error:
            raise InvalidRequest(f"{ALLOWANCE_LABEL[kind]}: {error}") from error
    try:
        return UserCreate(
            email=fields["email"], name=fields["name"], role=fields["role"] or "member", **amounts
        )
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"]).replace("_", " ") or "form"
        raise InvalidRequest(f"{where.capitalize()}: {problem['msg']}.") from error


def _back(org_id: uuid.UUID, view: TableView, notice: str, count: int) -> RedirectResponse:
    query = view.query(notice=notice, n=count)
    return RedirectResponse(f"/orgs/{org_id}{query}", status_code=303)
