"""Allowances: the one place where "Max Tokens" and "Max Train Tokens" change.

Every change, of one user or of many, both kinds at once, goes through `plan` (which
applies SPEC rules 1, 4 and 5 and the version check to every row, and refuses nothing
silently) and then `apply` (all rows, or none when any row is refused).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.errors import AllowanceChangeRefused, RuleRefused, VersionConflict

__all__ = ["AllowanceChangeRefused", "Plan", "Request", "apply", "plan", "resolve"]
from tokenadmin.journal.service import record
from tokenadmin.models import Organization, User
from tokenadmin.organization.service import current_period
from tokenadmin.tokens import ALLOWANCE_FIELD, Kind, fmt
from tokenadmin.user import repository as user_repository
from tokenadmin.user.periods import start_current_period


@dataclass
class Request:
    """One row of a change: new allowances for an existing or a new user."""

    user: User
    allowances: dict[Kind, int]
    expected_version: int | None = None
    new: bool = False


@dataclass
class Refusal:
    index: int
    user: User
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "user_id": str(self.user.id),
            "email": self.user.email,
            "code": self.code,
            "message": self.message,
            **self.details,
        }


@dataclass
class Change:
    user: User
    kind: Kind
    before: int
    after: int
    new: bool = False

    @property
    def delta(self) -> int:
        return self.after - self.before


@dataclass
class KindAfter:
    capacity: int
    allocated: int

    @property
    def balance(self) -> int:
        return self.capacity - self.allocated


@dataclass
class Plan:
    changes: list[Change]
    refused: list[Refusal]
    after: dict[Kind, KindAfter]

    @property
    def accepted(self) -> bool:
        return not self.refused


def plan(org: Organization, requests: list[Request], act: Act) -> Plan:
    """Check every row against every rule; nothing is written."""
    start = current_period(org, act.now)
    refused: list[Refusal] = []
    changes: list[Change] = []
    raises: dict[Kind, list[tuple[int, Change]]] = {kind: [] for kind in Kind}
    for index, request in enumerate(requests):
        user = request.user
        row_refusals = _check_row(org, index, request, start)
        refused.extend(row_refusals)
        if row_refusals:
            continue
        for kind, after in request.allowances.items():
            before = 0 if request.new else user.allowance(kind)
            if after != before or request.new:
                change = Change(user, kind, before, after, request.new)
                changes.append(change)
                if change.delta > 0:
                    raises[kind].append((index, change))

    totals: dict[Kind, KindAfter] = {}
    for kind in Kind:
        delta = sum(c.delta for c in changes if c.kind is kind)
        totals[kind] = KindAfter(org.capacity(kind), org.allocated(kind) + delta)
        shortfall = totals[kind].allocated - totals[kind].capacity
        if org.overallocation or shortfall <= 0:
            continue
        # Over the capacity: every row that raises this kind is refused. Rows that lower
        # it may go ahead (they are how an administrator resolves a shortfall).
        for index, change in raises[kind]:
            refused.append(
                Refusal(
                    index,
                    change.user,
                    "exceeds_balance",
                    f"{_label(kind)} for {change.user.email} would be {fmt(change.after)};"
                    f" the organization would be {fmt(shortfall)} {kind} tokens over its"
                    f" capacity of {fmt(org.capacity(kind))}.",
                    {
                        "kind": kind.value,
                        "requested": change.after,
                        "capacity": org.capacity(kind),
                        "allocated_after": totals[kind].allocated,
                        "shortfall": shortfall,
                    },
                )
            )
    refused.sort(key=lambda r: r.index)
    return Plan(changes=changes, refused=refused, after=totals)


def _label(kind: Kind) -> str:
    return "Max Tokens" if kind is Kind.inference else "Max Train Tokens"


def check_many_new_users(org: Organization, allowances: dict[Kind, int], count: int) -> None:
    """Rules 1 and 4 for `count` new users with the same allowances, without a row each
    (bulk seeding): refused as a whole with below_minimum or exceeds_balance."""
    for kind, allowance in allowances.items():
        label = _label(kind)
        if allowance < org.minimum(kind):
            raise RuleRefused(
                f"{label} would be {fmt(allowance)}; the minimum is {fmt(org.minimum(kind))}.",
                code="below_minimum",
                details={"kind": kind.value, "requested": allowance, "minimum": org.minimum(kind)},
            )
        allocated_after = org.allocated(kind) + allowance * count
        shortfall = allocated_after - org.capacity(kind)
        if allowance and shortfall > 0 and not org.overallocation:
            raise RuleRefused(
                f"{fmt(count)} users with {label} {fmt(allowance)} need {fmt(allowance * count)}"
                f" {kind} tokens; the organization would be {fmt(shortfall)} over its capacity"
                f" of {fmt(org.capacity(kind))}.",
                code="exceeds_balance",
                details={
                    "kind": kind.value,
                    "requested": allowance * count,
                    "capacity": org.capacity(kind),
                    "allocated_after": allocated_after,
                    "shortfall": shortfall,
                },
            )


def _check_row(org: Organization, index: int, request: Request, start: Any) -> list[Refusal]:
    user = request.user
    if not request.new and not user.active:
        if all(user.allowance(kind) == value for kind, value in request.allowances.items()):
            return []  # nothing would change (a table saved whole, say): nothing to refuse
        return [
            Refusal(
                index,
                user,
                "user_deactivated",
                f"{user.email} is deactivated; reactivate them to give them an allowance.",
            )
        ]
    stale = None if request.new else version_conflict(user, request.expected_version)
    if stale is not None:
        return [Refusal(index, user, "version_conflict", stale.message, stale.details)]
    refusals = []
    for kind, after in request.allowances.items():
        minimum = org.minimum(kind)
        committed = 0 if request.new else user.used_in(kind, start) + user.reserved(kind)
        if after < minimum:
            refusals.append(
                Refusal(
                    index,
                    user,
                    "below_minimum",
                    f"{_label(kind)} for {user.email} would be {fmt(after)};"
                    f" the minimum is {fmt(minimum)}.",
                    {"kind": kind.value, "requested": after, "minimum": minimum},
                )
            )
        elif after < committed:
            refusals.append(
                Refusal(
                    index,
                    user,
                    "below_used",
                    f"{_label(kind)} for {user.email} would be {fmt(after)}; they have already"
                    f" used or reserved {fmt(committed)} this period.",
                    {"kind": kind.value, "requested": after, "used_and_reserved": committed},
                )
            )
    return refusals


def version_conflict(user: User, expected: int | None) -> VersionConflict | None:
    """The refusal when a change carries a version the user no longer has, with the
    current values so the client can show both (the one place this rule lives)."""
    if expected is None or expected == user.version:
        return None
    return VersionConflict(
        f"{user.email} was changed by someone else since you loaded it"
        f" (version {expected}, now {user.version}).",
        details={
            "expected_version": expected,
            "current": {
                "version": user.version,
                "max_tokens": user.max_tokens,
                "max_train_tokens": user.max_train_tokens,
                "name": user.name,
                "role": user.role,
                "status": user.status,
            },
        },
    )


def refuse(plan_: Plan) -> None:
    """Raise the refusal that names every refused row."""
    rows = [r.to_dict() for r in plan_.refused]
    details = {"refused": rows, "balance_after": _after_dict(plan_)}
    if any(r.code == "version_conflict" for r in plan_.refused):
        raise VersionConflict(
            "Some users were changed by someone else meanwhile; nothing was saved.",
            details=details,
        )
    count = len(rows)
    first = plan_.refused[0].message
    more = f" (and {count - 1} more refused rows)" if count > 1 else ""
    raise AllowanceChangeRefused(f"Nothing was saved: {first}{more}", details=details)


def _after_dict(plan_: Plan) -> dict[str, Any]:
    return {
        kind.value: {
            "capacity": a.capacity,
            "allocated": a.allocated,
            "balance": a.balance,
        }
        for kind, a in plan_.after.items()
    }


def preview(plan_: Plan) -> dict[str, Any]:
    return {
        "accepted": plan_.accepted,
        "changes": [
            {
                "user_id": str(c.user.id),
                "email": c.user.email,
                "kind": c.kind.value,
                "field": ALLOWANCE_FIELD[c.kind],
                "before": c.before,
                "after": c.after,
            }
            for c in plan_.changes
        ],
        "refused": [r.to_dict() for r in plan_.refused],
        "balance_after": _after_dict(plan_),
    }


async def apply(
    session: AsyncSession,
    act: Act,
    org: Organization,
    plan_: Plan,
    *,
    reason: str | None = None,
    action: str = "allowance_changed",
) -> None:
    """Write an accepted plan: every change with its journal entry, in this transaction."""
    if not plan_.accepted:
        refuse(plan_)
    start = current_period(org, act.now)
    touched: dict[uuid.UUID, User] = {}
    created: set[uuid.UUID] = set()
    for change in plan_.changes:
        user = change.user
        if change.new:
            created.add(user.id)
            session.add(user)
        elif user.id not in touched:
            start_current_period(session, act, org, user, start)
        record(
            session,
            act,
            org,
            "user_created" if change.new else action,
            kind=change.kind,
            user=user,
            amount=change.after,
            allowance=change.delta,
            allocated=change.delta,
            reason=reason,
            details={"before": change.before, "after": change.after},
        )
        touched[user.id] = user
    for user in touched.values():
        user.updated_at = act.now
        if user.id not in created:
            user.version += 1
    org.updated_at = act.now


class RowLike(Protocol):
    user: str
    max_tokens: int | None
    max_train_tokens: int | None
    expected_version: int | None


async def resolve(
    session: AsyncSession, org: Organization, rows: Sequence[RowLike]
) -> list[Request]:
    """Turn rows naming users by id or email into requests; unknown or repeated users are
    refused together, each with its row."""
    ids: list[uuid.UUID] = []
    emails: list[str] = []
    for row in rows:
        try:
            ids.append(uuid.UUID(row.user))
        except ValueError:
            emails.append(row.user.lower())
    users = await user_repository.find_in_org(session, org.id, ids=ids, emails=emails)
    by_ref: dict[str, User] = {}
    for user in users:
        by_ref[str(user.id)] = user
        by_ref[user.email] = user
    problems = []
    requests = []
    seen: dict[uuid.UUID, int] = {}
    for index, row in enumerate(rows):
        ref = row.user if "@" not in row.user else row.user.lower()
        found = by_ref.get(ref) or by_ref.get(ref.lower())
        if found is None:
            problems.append(
                {
                    "index": index,
                    "user": row.user,
                    "code": "user_not_found",
                    "message": f"No user '{row.user}' in this organization.",
                }
            )
            continue
        if found.id in seen:
            problems.append(
                {
                    "index": index,
                    "user": row.user,
                    "code": "duplicate_user",
                    "message": f"{found.email} appears in rows {seen[found.id]} and {index};"
                    " put both columns in one row.",
                }
            )
            continue
        seen[found.id] = index
        allowances = {
            kind: value
            for kind, value in (
                (Kind.inference, row.max_tokens),
                (Kind.training, row.max_train_tokens),
            )
            if value is not None
        }
        requests.append(Request(found, allowances, row.expected_version))
    if problems:
        raise AllowanceChangeRefused(
            f"Nothing was saved: {problems[0]['message']}"
            + (f" (and {len(problems) - 1} more refused rows)" if len(problems) > 1 else ""),
            details={"refused": problems},
        )
    return requests
