"""Users: creation, profile, roles, deactivation and reactivation (SPEC rules 4 and 6)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import allowance
from tokenadmin.act import Act
from tokenadmin.allowance.service import Request
from tokenadmin.auth.passwords import MIN_PASSWORD_LENGTH, hash_password
from tokenadmin.auth.principal import Principal
from tokenadmin.errors import Conflict, EmailTaken, InvalidRequest, NotFound, TokenAdminError
from tokenadmin.journal.service import record, record_returned
from tokenadmin.models import DashboardSession, Organization, Reservation, User
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.service import current_period
from tokenadmin.tokens import ALLOWANCE_FIELD, Kind
from tokenadmin.usage.service import give_back
from tokenadmin.user import repository
from tokenadmin.user.periods import start_current_period
from tokenadmin.user.schemas import UserListQuery, UserOut, UserPage


@dataclass
class NewUser:
    email: str
    name: str
    role: str = "member"
    max_tokens: int | None = None
    max_train_tokens: int | None = None
    password: str | None = None


def new_user_request(org: Organization, act: Act, spec: NewUser) -> Request:
    """A row that creates a user; unset allowances default to the organization's minimums."""
    if spec.password is not None and len(spec.password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.", code="weak_password"
        )
    user = User(
        id=uuid.uuid4(),
        org_id=org.id,
        email=spec.email.lower(),
        name=spec.name,
        role=spec.role,
        status="active",
        max_tokens=0,
        max_train_tokens=0,
        inference_used=0,
        training_used=0,
        inference_reserved=0,
        training_reserved=0,
        period_start=current_period(org, act.now),
        version=1,
        password_hash=hash_password(spec.password) if spec.password else None,
        created_at=act.now,
        updated_at=act.now,
    )
    allowances = {
        Kind.inference: org.min_inference if spec.max_tokens is None else spec.max_tokens,
        Kind.training: org.min_training if spec.max_train_tokens is None else spec.max_train_tokens,
    }
    return Request(user=user, allowances=allowances, new=True)


async def check_emails_free(session: AsyncSession, emails: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for email in emails:
        if email.lower() in seen:
            raise InvalidRequest(
                f"{email} appears more than once.", code="duplicate_user", details={"email": email}
            )
        seen[email.lower()] = email
    taken = await repository.emails_in_use(session, sorted(seen))
    if taken:
        email = seen[min(taken)]
        raise EmailTaken(f"A user with email {email} already exists.", details={"email": email})


async def create(session: AsyncSession, act: Act, org: Organization, spec: NewUser) -> User:
    """Create an active user with at least the minimum, taken from the balance (rule 4)."""
    await check_emails_free(session, [spec.email])
    request = new_user_request(org, act, spec)
    await allowance.service.change(session, act, org, [request], one_user=True)
    try:
        await session.flush()
    except IntegrityError as error:
        raise EmailTaken(f"A user with email {spec.email} already exists.") from error
    return request.user


async def search(
    session: AsyncSession, org: Organization, now: datetime, query: UserListQuery
) -> UserPage:
    """A page of an organization's users, searched, filtered and sorted, each with this
    period's usage (the API's user list and the CLI's `user list`)."""
    start = current_period(org, now)
    users, total = await repository.search(
        session,
        repository.UserQuery(
            org_id=org.id,
            period_start=start,
            descending=query.order == "desc",
            **query.model_dump(exclude={"order"}),
        ),
    )
    return UserPage(
        users=[UserOut.of(u, start) for u in users],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


async def find_by_ref(
    session: AsyncSession, org_id: uuid.UUID | None, ref: str, *, where: str = "this organization"
) -> User:
    """The user of the organization (None: of any) named by `ref`, an id or an email in any
    case; anyone else is refused (404 user_not_found), saying where they were looked for."""
    found = (await repository.find_by_refs(session, org_id, [ref])).get(ref)
    if found is None:
        place = f" in {where}" if where else ""
        raise NotFound(f"No user '{ref}'{place}.", code="user_not_found")
    return found


async def visible(
    session: AsyncSession, principal: Principal, user_id: uuid.UUID, scope: str
) -> tuple[User, Organization]:
    """A user and their organization, when the caller is that user or has `scope` in the
    user's organization; to anyone else the user does not exist (404). An organization's
    caller looks only in its own organization."""
    user = await repository.get(session, user_id, org_id=principal.org_id)
    if user is None:
        raise NotFound("User not found.")
    if principal.user_id != user.id:
        try:
            principal.require(user.org_id, scope)
        except NotFound as error:
            raise NotFound("User not found.") from error
    return user, await organization_service.get(session, user.org_id)


async def get(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await repository.get(session, user_id)
    if user is None:
        raise NotFound("User not found.")
    return user


async def update(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: User,
    *,
    name: str | None = None,
    role: str | None = None,
    allowances: dict[Kind, int] | None = None,
    expected_version: int | None = None,
    reason: str | None = None,
) -> User:
    """Change a user's profile and allowances together; all or nothing."""
    # Stale: refused only when a field this change sets was changed since (or the journal
    # can't tell); a change of other fields merges.
    wanted: dict[str, Any] = {"name": name, "role": role}
    wanted |= {ALLOWANCE_FIELD[kind]: value for kind, value in (allowances or {}).items()}
    stale = await allowance.service.check_version(
        session,
        act,
        org,
        user,
        expected_version,
        {f: v for f, v in wanted.items() if v is not None},
    )
    if stale is not None:
        raise stale
    versioned = False
    if allowances:
        result = await allowance.service.change(
            session, act, org, [Request(user, allowances)], reason=reason, one_user=True
        )
        versioned = bool(result.plan.changes)
    profile: dict[str, Any] = {}
    for field, value in (("name", name), ("role", role)):
        if value is not None and getattr(user, field) != value:
            profile[field] = [getattr(user, field), value]
            setattr(user, field, value)
    if profile:
        if not versioned:
            user.version += 1
        details = {**profile, "version": user.version}
        record(session, act, org, "user_changed", user=user, details=details, reason=reason)
        user.updated_at = act.now
    return user


async def deactivate(session: AsyncSession, act: Act, org: Organization, user: User) -> User:
    """Stop usage, cancel open reservations and return the unused allowance (rule 6)."""
    if not user.active:
        raise Conflict(f"{user.email} is already deactivated.", code="already_deactivated")
    start = current_period(org, act.now)
    start_current_period(session, act, org, user, start)
    for reservation in await _open_reservations(session, user):
        give_back(session, act, org, user, reservation, "released", reason="user deactivated")
    reason = "unused allowance returned; the used part returns when the period ends"
    returns = {kind: user.allowance(kind) - user.used(kind) for kind in Kind}
    version = {"version": user.version + 1}  # the version this leaves (see below)
    for kind, returned in returns.items():
        if returned:
            record_returned(
                session,
                act,
                org,
                "user_deactivated",
                user,
                kind,
                returned,
                reason=reason,
                details=version,
            )
    if not any(returns.values()):
        record(session, act, org, "user_deactivated", user=user, reason=reason, details=version)
    # Signed out everywhere: a session of before must not work again on reactivation.
    await session.execute(delete(DashboardSession).where(DashboardSession.user_id == user.id))
    user.status = "deactivated"
    user.version += 1
    user.updated_at = act.now
    return user


async def reactivate(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: User,
    allowances: dict[Kind, int] | None = None,
) -> User:
    """Make a user active again with at least the minimum, from the balance (rule 6)."""
    if user.active:
        raise Conflict(f"{user.email} is already active.", code="already_active")
    start = current_period(org, act.now)
    start_current_period(session, act, org, user, start)
    wanted = allowances or {}
    # Unnamed kinds get the minimum (or what was used, if more); named ones are checked by
    # plan() like any other change, so a value below what was used is refused (rule 5).
    targets = {
        kind: wanted[kind] if kind in wanted else max(org.minimum(kind), user.used(kind))
        for kind in Kind
    }
    user.status = "active"
    try:
        result = await allowance.service.change(
            session, act, org, [Request(user, targets)], one_user=True, action="user_reactivated"
        )
    except TokenAdminError:
        user.status = "deactivated"
        raise
    if not result.plan.changes:
        user.version += 1
    return user


async def set_password(session: AsyncSession, act: Act, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.", code="weak_password"
        )
    user.password_hash = hash_password(password)
    user.updated_at = act.now


async def _open_reservations(session: AsyncSession, user: User) -> Sequence[Reservation]:
    from tokenadmin.usage import repository as usage_repository

    return await usage_repository.open_reservations_of(session, user.id, lock=True)
