"""Token requests: a member asks for more tokens of a kind; an administrator approves
(possibly another amount), denies, or the member withdraws; each exactly once.

Decisions of this module:
- A reason is required: the administrators decide on it.
- At most one request per user and kind is pending (`request_already_pending`): a second
  one would ask the administrators twice for the same thing, and approving both would
  grant it twice. The member withdraws the first to ask again with another amount.
- Approving raises the allowance by the approved amount (by default the amount asked)
  through the one single-user allowance change (`user.service.update`: the allowance plan
  with rules 1, 4, 5 and 8, the balance, the versions and its journal entry, whose reason
  names the request). A refused change leaves the request pending.
- Every change of state is also an audit entry of the journal (no deltas), in the same
  transaction: tokens_requested, token_request_approved, token_request_denied,
  token_request_withdrawn, each with the request's id in its details.
- Auto-approval (the organization's rule, `auto_approve_*`): a request asked while the rule
  is on is approved at once, in the same transaction, through `approve` (so the allowance
  rules apply exactly as for an administrator), by AUTO_APPROVER, when its amount is at most
  the rule's largest amount, the user has had fewer than the rule's number of automatic
  approvals this period (both kinds counted together), and the kind's allocated share of the
  capacity after the grant is at most the rule's percent. Its journal entry carries the
  rule (`details.rule`). Otherwise, or when the allowance rules refuse the raise, the
  request stays pending for the administrators: the rule never refuses a request.
- Callers lock the organization (`organization.service.lock_for_change`) first: the
  entries extend the user's hash chain, and the lock makes each decision happen once.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession
from uuid6 import uuid7

from tokenadmin.act import Act
from tokenadmin.amounts import check_amount
from tokenadmin.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    RequestAlreadyDecided,
    RequestAlreadyPending,
    TokenAdminError,
)
from tokenadmin.events import service as events
from tokenadmin.journal.service import record
from tokenadmin.models import Organization, TokenRequest, User
from tokenadmin.organization import service as organization_service
from tokenadmin.token_request import repository
from tokenadmin.token_request.repository import RequestQuery
from tokenadmin.token_request.schemas import TokenRequestOut, TokenRequestPage
from tokenadmin.tokens import Kind, fmt
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service

Decision = Callable[[AsyncSession, Act, Organization], Awaitable[TokenRequestOut]]
"""A decision on a request, run once its organization is locked (`lock_org_of`)."""

AUTO_APPROVER = "system:auto-approval"
"""Who decides a request the auto-approval rule approves (its `decided_by`, the actor)."""

__all__ = [
    "AUTO_APPROVER",
    "Decision",
    "RequestQuery",
    "approve",
    "ask",
    "deny",
    "get",
    "search",
    "withdraw",
]


def _text(text: str | None, field: str, *, required: str | None = None) -> str | None:
    cleaned = (text or "").strip() or None
    if cleaned is None and required is not None:
        raise InvalidRequest(required, details={"field": field})
    return cleaned


async def ask(
    session: AsyncSession,
    act: Act,
    org: Organization,
    user: User,
    kind: Kind,
    amount: int,
    reason: str,
) -> TokenRequestOut:
    """An active user of `org` asks for `amount` more tokens of `kind`."""
    check_amount(amount, positive=True, field="amount")
    why = _text(
        reason,
        "reason",
        required="Say why the tokens are needed: the reason is what your administrators decide on.",
    )
    assert why is not None
    if user.org_id != org.id:
        raise NotFound("User not found.", code="user_not_found")
    if not user.active:
        raise Conflict(
            f"{user.email} is deactivated; only active users ask for tokens.",
            code="user_deactivated",
        )
    pending = await repository.pending_of(session, user.id, kind.value)
    if pending is not None:
        raise RequestAlreadyPending(
            f"{user.email} already asked for {fmt(pending.amount)} {kind.value} tokens and"
            " the administrators have not decided yet; withdraw that request to ask for"
            " another amount.",
            details={"request_id": str(pending.id), "kind": kind.value, "amount": pending.amount},
        )
    request = TokenRequest(
        id=uuid7(),
        org_id=org.id,
        user_id=user.id,
        kind=kind.value,
        amount=amount,
        reason=why,
        state="pending",
        created_at=act.now,
        created_by=act.actor,
        version=1,
    )
    session.add(request)
    record(
        session,
        act,
        org,
        "tokens_requested",
        user=user,
        reason=why,
        details={"request_id": str(request.id), "kind": kind.value, "amount": amount},
    )
    await events.token_request_made(session, act, org, request, user)
    if await _within_rule(session, act, org, user, kind, amount):
        system = Act(AUTO_APPROVER, act.now)
        try:
            return await approve(session, system, org, request.id, rule=auto_approval_rule(org))
        except TokenAdminError:
            # The allowance rules refused the raise (nothing of it was written, see
            # allowance.service.change): the administrators decide instead.
            pass
    return TokenRequestOut.of(request, user)


def auto_approval_rule(org: Organization) -> dict[str, int]:
    """The organization's auto-approval rule as its decisions journal it."""
    return {
        "max_amount": org.auto_approve_max_amount,
        "max_per_period": org.auto_approve_max_per_period,
        "max_allocated_percent": org.auto_approve_max_allocated_percent,
    }


async def _within_rule(
    session: AsyncSession, act: Act, org: Organization, user: User, kind: Kind, amount: int
) -> bool:
    if not org.auto_approve_enabled or amount > org.auto_approve_max_amount:
        return False
    # The share after the grant, in whole numbers: allocated / capacity <= percent / 100.
    allocated_after = org.allocated(kind) + amount
    if allocated_after * 100 > org.auto_approve_max_allocated_percent * org.capacity(kind):
        return False
    since = organization_service.current_period(org, act.now)
    approved = await repository.count_decided_by(session, user.id, AUTO_APPROVER, since)
    return approved < org.auto_approve_max_per_period


async def get(session: AsyncSession, request_id: uuid.UUID) -> tuple[TokenRequest, User]:
    """A request and its user (the caller checks who may see it)."""
    request = await repository.get(session, request_id)
    user = await user_repository.get(session, request.user_id) if request else None
    if request is None or user is None:
        raise NotFound("Token request not found.")
    return request, user


async def lock_org_of(session: AsyncSession, act: Act, request_id: uuid.UUID) -> Organization:
    """The organization of a request, locked for a change of the request's state."""
    request = await repository.get(session, request_id)
    if request is None:
        raise NotFound("Token request not found.")
    return await organization_service.lock_for_change(session, act, request.org_id)


async def search(session: AsyncSession, query: RequestQuery) -> TokenRequestPage:
    """Requests newest first: of an organization, of a user, in a state, of a kind."""
    rows, total = await repository.search(session, query)
    return TokenRequestPage(
        requests=[TokenRequestOut.of(request, user) for request, user in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


async def _pending(
    session: AsyncSession,
    org: Organization,
    request_id: uuid.UUID,
    user_id: uuid.UUID | None = None,
) -> tuple[TokenRequest, User]:
    request = await repository.get(session, request_id, lock=True)
    if request is None or request.org_id != org.id:
        raise NotFound("Token request not found.")
    if user_id is not None and request.user_id != user_id:
        raise NotFound("Token request not found.")
    user = await user_repository.get(session, request.user_id)
    assert user is not None  # users are never deleted
    if request.state != "pending":
        raise RequestAlreadyDecided(
            f"This request of {user.email} was already {request.state}"
            f" by {request.decided_by}; a request is decided once.",
            details={
                "request_id": str(request.id),
                "state": request.state,
                "decided_at": request.decided_at.isoformat() if request.decided_at else None,
                "decided_by": request.decided_by,
            },
        )
    return request, user


def _decide(
    session: AsyncSession,
    act: Act,
    org: Organization,
    request: TokenRequest,
    user: User,
    state: str,
    note: str | None,
    *,
    rule: dict[str, int] | None = None,
) -> TokenRequestOut:
    request.state = state
    request.decided_at = act.now
    request.decided_by = act.actor
    request.note = note
    request.version += 1
    details: dict[str, object] = {
        "request_id": str(request.id),
        "kind": request.kind,
        "amount": request.amount,
    }
    if request.approved_amount is not None:
        details["approved_amount"] = request.approved_amount
    if rule is not None:
        details["rule"] = rule
    record(session, act, org, f"token_request_{state}", user=user, reason=note, details=details)
    return TokenRequestOut.of(request, user)


async def approve(
    session: AsyncSession,
    act: Act,
    org: Organization,
    request_id: uuid.UUID,
    *,
    amount: int | None = None,
    note: str | None = None,
    rule: dict[str, int] | None = None,
) -> TokenRequestOut:
    """Grant a pending request: the user's allowance of its kind rises by `amount` (by
    default the amount asked), through the allowance rules; refused, it stays pending.
    `rule`: the auto-approval rule that decided it, for the journal."""
    request, user = await _pending(session, org, request_id)
    granted = (
        request.amount if amount is None else check_amount(amount, positive=True, field="amount")
    )
    why = _text(note, "note")
    kind = Kind(request.kind)
    await user_service.update(
        session,
        act,
        org,
        user,
        allowances={kind: user.allowance(kind) + granted},
        reason=f"token request {request.id}" + (f": {why}" if why else ""),
    )
    request.approved_amount = granted
    decided = _decide(session, act, org, request, user, "approved", why, rule=rule)
    await events.token_request_decided(session, act, org, request, user, automatic=rule is not None)
    return decided


async def deny(
    session: AsyncSession, act: Act, org: Organization, request_id: uuid.UUID, *, note: str
) -> TokenRequestOut:
    """Refuse a pending request, saying why (the member reads the note)."""
    why = _text(note, "note", required="Say why the request is denied: the member reads it.")
    request, user = await _pending(session, org, request_id)
    decided = _decide(session, act, org, request, user, "denied", why)
    await events.token_request_decided(session, act, org, request, user)
    return decided


async def withdraw(
    session: AsyncSession,
    act: Act,
    org: Organization,
    request_id: uuid.UUID,
    *,
    user_id: uuid.UUID | None = None,
) -> TokenRequestOut:
    """The member takes back a pending request (with `user_id`: only their own)."""
    request, user = await _pending(session, org, request_id, user_id)
    decided = _decide(session, act, org, request, user, "withdrawn", None)
    await events.token_request_decided(session, act, org, request, user)
    return decided
