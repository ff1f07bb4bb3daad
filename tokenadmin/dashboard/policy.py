"""The allocation policy page: a preset or custom numbers per kind, previewed (who, which
rule, from → to) before saving; Run now; the log of what the policy did; temporary boosts.

Thin callers of policy.service: this page reads the form and renders the answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.web import ViewerDep, WriterDep, render, require_org, up_to_date
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import InvalidRequest, TokenAdminError
from tokenadmin.organization import service as organization_service
from tokenadmin.policy import service
from tokenadmin.schemas import Text
from tokenadmin.tokens import Kind

router = APIRouter(include_in_schema=False)
LOG_ROWS = 50
PREVIEW_ROWS = 200
Typed = Annotated[str, Form(max_length=64)]

NOTICES = {
    "saved": "Policy saved.",
    "boosted": "Boost given: the allowance is raised until it ends.",
    "ended": "Boost ended: the allowance is back (never below what was used).",
}


@dataclass
class KindForm:
    """One kind's policy as typed on the page."""

    preset: str = "standard"
    enabled: bool = False
    floor: str = ""
    ceiling: str = ""
    increase_enabled: bool = True
    trigger_percent: str = ""
    bump: str = ""
    cooldown_hours: str = ""
    reclaim_enabled: bool = True
    idle_days: str = ""

    @classmethod
    def of(cls, policy: service.KindPolicy) -> KindForm:
        bump = (
            f"{policy.bump_percent}%"
            if policy.bump_percent is not None
            else f"{policy.bump_amount:,}"
        )
        return cls(
            preset=policy.preset,
            enabled=policy.enabled,
            floor=f"{policy.floor:,}",
            ceiling=f"{policy.ceiling:,}",
            increase_enabled=policy.increase_enabled,
            trigger_percent=str(policy.trigger_percent),
            bump=bump,
            cooldown_hours=str(policy.cooldown_hours),
            reclaim_enabled=policy.reclaim_enabled,
            idle_days=str(policy.idle_days),
        )


@dataclass
class PolicyForm:
    kinds: dict[Kind, KindForm]
    errors: dict[str, str] = field(default_factory=dict)

    def _whole(self, kind: Kind, name: str) -> int | None:
        text = getattr(self.kinds[kind], name).strip().removesuffix("%").strip()
        if text.isascii() and text.isdigit():
            return int(text)
        self.errors[f"{kind}_{name}"] = "A whole number, such as 80."
        return None

    def _amount(self, kind: Kind, name: str, *, positive: bool) -> int | None:
        try:
            return parse_amount(getattr(self.kinds[kind], name), positive=positive)
        except ValueError as error:
            self.errors[f"{kind}_{name}"] = str(error)
            return None

    def changes(self) -> dict[Kind, dict[str, Any]]:
        """Each kind's changes for the service: a preset alone fills in every number;
        `custom` sends the numbers typed."""
        changes: dict[Kind, dict[str, Any]] = {}
        for kind, typed in self.kinds.items():
            given: dict[str, Any] = {
                "preset": typed.preset,
                "enabled": typed.enabled,
                "increase_enabled": typed.increase_enabled,
                "reclaim_enabled": typed.reclaim_enabled,
            }
            if typed.preset == "custom":
                given["floor"] = self._amount(kind, "floor", positive=False)
                given["ceiling"] = self._amount(kind, "ceiling", positive=True)
                given["trigger_percent"] = self._whole(kind, "trigger_percent")
                given["cooldown_hours"] = self._whole(kind, "cooldown_hours")
                given["idle_days"] = self._whole(kind, "idle_days")
                if typed.bump.strip().endswith("%"):
                    given["bump_percent"] = self._whole(kind, "bump")
                else:
                    given["bump_amount"] = self._amount(kind, "bump", positive=True)
            changes[kind] = given
        return changes


def _policy_form(data: Mapping[str, Any]) -> PolicyForm:
    """The form as posted: each kind's preset, switches (a checkbox sent or not) and the
    numbers as typed."""

    def text(name: str, default: str = "") -> str:
        value = data.get(name, default)
        return value[:64] if isinstance(value, str) else default

    kinds = {}
    for kind in Kind:
        kinds[kind] = KindForm(
            preset=text(f"{kind}_preset", "standard"),
            enabled=f"{kind}_enabled" in data,
            increase_enabled=f"{kind}_increase_enabled" in data,
            reclaim_enabled=f"{kind}_reclaim_enabled" in data,
            **{name: text(f"{kind}_{name}") for name in TYPED},
        )
    return PolicyForm(kinds)


TYPED = ("floor", "ceiling", "trigger_percent", "bump", "cooldown_hours", "idle_days")


async def _page_data(session: AsyncSession, org_id: uuid.UUID, act: Act) -> dict[str, Any]:
    org = await organization_service.get(session, org_id)
    policies = await service.current(session, org)
    log, log_total = await service.log(session, org, limit=LOG_ROWS)
    boosts, _ = await service.boosts(session, org, state="active", limit=200)
    saved_preview = await service.run(session, act, org, dry_run=True)
    return {
        "org": org,
        "policies": policies,
        "log": log,
        "log_total": log_total,
        "boosts": boosts,
        "saved_preview": saved_preview,
        "presets": service.presets_for(org),
        "balance": await organization_service.balance(session, org, act.now),
    }


def _act(request: Request, viewer: Viewer) -> Act:
    return Act(viewer.principal.actor, clock_of(request).now())


async def _page(
    request: Request,
    viewer: Viewer,
    org_id: uuid.UUID,
    *,
    form: PolicyForm | None = None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    act = _act(request, viewer)
    data = await db_of(request).read(lambda session: _page_data(session, org_id, act))
    if form is None:
        form = PolicyForm({kind: KindForm.of(p) for kind, p in data["policies"].items()})
    return render(
        request,
        "policy.html",
        viewer,
        status_code=status_code,
        **data,
        form=form,
        tz=ZoneInfo(data["org"].time_zone),
        **context,
    )


@router.get("/orgs/{org_id}/policy")
async def policy_page(
    request: Request,
    org_id: uuid.UUID,
    viewer: ViewerDep,
    notice: Annotated[str | None, Query(max_length=20)] = None,
    moved: Annotated[int | None, Query(ge=0)] = None,
) -> HTMLResponse:
    require_org(viewer, org_id, "admin")
    await up_to_date(request, org_id)
    words = NOTICES.get(notice or "")
    if notice == "ran" and moved is not None:
        words = f"The policy ran: {moved:,} allowance{'s' if moved != 1 else ''} changed."
    return await _page(request, viewer, org_id, notice=words)


@router.post("/orgs/{org_id}/policy")
async def save_policy(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    action: Annotated[Literal["preview", "save"], Form()] = "preview",
) -> Response:
    """Preview the policy as typed (nothing saved), or save it."""
    require_org(viewer, org_id, "admin")
    form = _policy_form(await request.form())
    changes = form.changes()
    if form.errors:
        return await _page(request, viewer, org_id, form=form, status_code=422)

    async def work(session: AsyncSession) -> service.PolicyUpdate:
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        return await service.update(session, act, org, changes, dry_run=action == "preview")

    try:
        result = await db_of(request).write(work)
    except TokenAdminError as error:
        field_name = error.details.get("field")
        kind = error.details.get("kind")
        form.errors[f"{kind}_{field_name}" if kind and field_name else "policy"] = error.message
        return await _page(
            request, viewer, org_id, form=form, status_code=error.status_code, error=error.message
        )
    if result.applied:
        return RedirectResponse(f"/orgs/{org_id}/policy?notice=saved", status_code=303)
    shown = PolicyForm({kind: KindForm.of(p) for kind, p in result.policies.items()})
    return await _page(request, viewer, org_id, form=shown, preview=result.preview)


@router.post("/orgs/{org_id}/policy/run")
async def run_policy(request: Request, org_id: uuid.UUID, viewer: WriterDep) -> Response:
    """Run the saved policy now."""
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> service.Run:
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        return await service.run(session, act, org)

    try:
        result = await db_of(request).write(work)
    except TokenAdminError as error:
        return await _page(
            request, viewer, org_id, status_code=error.status_code, error=error.message
        )
    target = f"/orgs/{org_id}/policy?notice=ran&moved={len(result.moves)}#log"
    return RedirectResponse(target, status_code=303)


def _end_of(day: str, org_tz: str) -> datetime:
    """The end of a boost as typed: a date (the boost ends as that day begins in the
    organization's time zone) or a date and time (in that zone unless it names one)."""
    text = day.strip()
    try:
        if "T" in text:
            moment = datetime.fromisoformat(text)
        else:
            moment = datetime.combine(datetime.fromisoformat(text).date(), time())
    except ValueError as error:
        raise InvalidRequest(
            "The end is a date, such as 2026-04-01.",
            code="invalid_request",
            details={"field": "ends_at"},
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(org_tz))
    return moment


@router.post("/orgs/{org_id}/boosts")
async def add_boost(
    request: Request,
    org_id: uuid.UUID,
    viewer: WriterDep,
    user: Annotated[Text, Form(max_length=320)] = "",
    kind: Annotated[Kind, Form()] = Kind.inference,
    amount: Typed = "",
    ends_at: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[Text, Form(max_length=500)] = "",
) -> Response:
    """Give one user a boost of one kind until a date."""
    require_org(viewer, org_id, "admin")
    boost_form = {
        "user": user,
        "kind": kind.value,
        "amount": amount,
        "ends_at": ends_at,
        "reason": reason,
    }

    async def work(session: AsyncSession) -> None:
        try:
            tokens = parse_amount(amount, positive=True)
        except ValueError as error:
            raise InvalidRequest(
                f"Tokens: {error}", code="invalid_amount", details={"field": "amount"}
            ) from error
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        await service.add_boost(
            session,
            act,
            org,
            user_ref=user,
            kind=kind,
            amount=tokens,
            ends_at=_end_of(ends_at, org.time_zone),
            reason=reason or None,
        )

    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        return await _page(
            request,
            viewer,
            org_id,
            status_code=error.status_code,
            boost_error=error.message,
            boost_form=boost_form,
        )
    return RedirectResponse(f"/orgs/{org_id}/policy?notice=boosted#boosts", status_code=303)


@router.post("/orgs/{org_id}/boosts/{boost_id}/end")
async def end_boost(
    request: Request, org_id: uuid.UUID, boost_id: uuid.UUID, viewer: WriterDep
) -> Response:
    """End a boost now."""
    require_org(viewer, org_id, "admin")

    async def work(session: AsyncSession) -> None:
        act = _act(request, viewer)
        org = await organization_service.lock_for_change(session, act, org_id)
        await service.end_boost(session, act, org, boost_id)

    try:
        await db_of(request).write(work)
    except TokenAdminError as error:
        return await _page(
            request, viewer, org_id, status_code=error.status_code, boost_error=error.message
        )
    return RedirectResponse(f"/orgs/{org_id}/policy?notice=ended#boosts", status_code=303)
