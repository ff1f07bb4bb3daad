"""Distributing the balance: the same amount added to each chosen user's allowance, of one
kind or both, computed as an equal split, a fixed amount or a percentage of the balance,
between a minimum and a maximum per user.

`preview` computes it (nothing is written) as one allowance plan of both kinds, names the
purchases expiring soon that it depends on (`expiring_purchases`), and names what it shows
with a `preview_token`; `commit` writes that plan in the caller's
transaction, all rows of both kinds or none, and only if the token still names it. The API,
the CLI and the dashboard call these; none computes anything of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.distribution.schemas import (
    DistributionOut,
    DistributionRequest,
    DistributionRow,
    ExpiringPurchase,
    KindDistribution,
    KindRule,
)
from tokenadmin.errors import Conflict, InvalidRequest, RuleRefused
from tokenadmin.models import Organization, Purchase, User
from tokenadmin.organization import service as organization_service
from tokenadmin.tokens import ALLOWANCE_FIELD, Kind, balance, fmt
from tokenadmin.user import repository as user_repository

MAX_USERS = 200_000
"""The most active users one distribution over "all active users" reaches."""


class PreviewStale(Conflict):
    """Apply was given the token of a preview that no longer matches what is stored."""

    code = "preview_stale"


class NoActiveUsers(RuleRefused):
    code = "no_active_users"


@dataclass
class Distribution:
    """A distribution computed for an organization: its allowance plan, and the token that
    names what it shows."""

    org: Organization
    rules: dict[Kind, KindRule]
    users: list[User]
    per_user: dict[Kind, int]
    balance_before: dict[Kind, int]
    plan: allowance_service.Plan
    reason: str
    preview_token: str
    expiring: list[ExpiringPurchase] = field(default_factory=list)
    applied: bool = False

    @property
    def accepted(self) -> bool:
        return self.plan.accepted

    def out(self) -> DistributionOut:
        kinds = {}
        for kind, rule in self.rules.items():
            rows = [
                DistributionRow(
                    user_id=str(c.user.id), email=c.user.email, before=c.before, after=c.after
                )
                for c in self.plan.changes
                if c.kind is kind
            ]
            kinds[kind.value] = KindDistribution(
                kind=kind.value,
                field=ALLOWANCE_FIELD[kind],
                method=rule.method,
                per_user=self.per_user[kind],
                added=sum(r.after - r.before for r in rows),
                balance_before=self.balance_before[kind],
                balance_after=self.plan.after[kind].balance,
                rows=rows,
            )
        return DistributionOut(
            applied=self.applied,
            accepted=self.accepted,
            users=len(self.users),
            kinds=kinds,
            refused=[r.to_dict() for r in self.plan.refused],
            preview_token=self.preview_token,
            expiring=self.expiring,
        )


def amount_per_user(rule: KindRule, balance_now: int, users: int) -> int:
    """Integers only: an equal split (or a percentage's) leaves the remainder in the
    balance; the minimum and the maximum bound the result."""
    available = max(0, balance_now)
    if rule.method == "fixed":
        per_user = rule.amount or 0
    elif rule.method == "percent":
        per_user = available * (rule.percent or 0) // 100 // users
    else:
        per_user = available // users
    per_user = max(per_user, rule.minimum)
    if rule.maximum is not None:
        per_user = min(per_user, rule.maximum)
    return per_user


@dataclass
class _Ref:
    """A user named by id or email whom the organization doesn't have: the allowance
    change refuses the row (user_not_found)."""

    user: str
    max_tokens: int | None = None
    max_train_tokens: int | None = None
    expected_version: int | None = None


async def chosen_users(
    session: AsyncSession, org: Organization, refs: Sequence[str] | None
) -> list[User | _Ref]:
    """Every active user (by email) when none are named; else each user named by id or
    email, in the order given, or the reference when no such user is here."""
    if refs is None:
        query = user_repository.UserQuery(
            org_id=org.id,
            period_start=org.period_start,
            status="active",
            sort="email",
            limit=MAX_USERS,
        )
        users, total = await user_repository.search(session, query)
        if not users:
            raise NoActiveUsers("There is no active user to distribute to; add users first.")
        if total > len(users):  # never a distribution over some of "all" the users
            raise InvalidRequest(
                f"The organization has {fmt(total)} active users; a distribution over all of"
                f" them covers at most {fmt(MAX_USERS)}. Name the users to distribute to.",
                code="too_many_users",
                details={"active_users": total, "maximum": MAX_USERS},
            )
        return list(users)
    unique = list(dict.fromkeys(ref.strip() for ref in refs))
    found = await user_repository.find_by_refs(session, org.id, unique)
    return [found.get(ref) or _Ref(ref) for ref in unique]


async def preview(
    session: AsyncSession, act: Act, org: Organization, request: DistributionRequest
) -> Distribution:
    """The distribution as it would be applied now: both kinds in one allowance plan, with
    every refused row; nothing is written. `org` is locked for change
    (organization.service.lock_for_change)."""
    rules = {
        kind: rule
        for kind, rule in ((Kind.inference, request.inference), (Kind.training, request.training))
        if rule is not None
    }
    chosen = await chosen_users(session, org, request.users)
    users = [u for u in chosen if isinstance(u, User)]
    before = {kind: balance(org.capacity(kind), org.allocated(kind)) for kind in rules}
    per_user = {
        kind: amount_per_user(rule, before[kind], max(1, len(users)))
        for kind, rule in rules.items()
    }
    rows: list[allowance_service.Request | _Ref] = [
        allowance_service.Request(
            u,
            {kind: u.allowance(kind) + per_user[kind] for kind in rules},
            expected_version=u.version,
        )
        if isinstance(u, User)
        else u
        for u in chosen
    ]
    result = await allowance_service.change(session, act, org, rows, dry_run=True)
    methods = ", ".join(f"{kind}: {rule.method}" for kind, rule in rules.items())
    reason = f"Distribution ({methods})" + (f": {request.reason}" if request.reason else "")
    raised = [k for k in rules if any(c.kind is k and c.delta > 0 for c in result.plan.changes)]
    purchases = await organization_service.list_purchases(session, org)
    return Distribution(
        org=org,
        rules=rules,
        users=users,
        per_user=per_user,
        balance_before=before,
        plan=result.plan,
        reason=reason,
        preview_token=_token(org, before, rows),
        expiring=expiring_purchases(org, purchases, result.plan, raised, act.now),
    )


def expiring_soon_until(org: Organization, now: datetime) -> datetime:
    """Purchases expiring up to this moment are "expiring soon": within the warning the
    balance card gives (30 days), or before the current period ends, whichever is later."""
    soon = now + organization_service.EXPIRY_WARNING
    period_end = organization_service.current_period_end(org, now)
    return soon if period_end is None else max(soon, period_end)


def expiring_purchases(
    org: Organization,
    purchases: Sequence[Purchase],
    plan: allowance_service.Plan,
    kinds: Sequence[Kind],
    now: datetime,
) -> list[ExpiringPurchase]:
    """The purchases expiring soon that this distribution depends on: for each kind it
    raises, each such purchase (soonest first) whose expiry would leave the capacity below
    what is allocated after the plan. An expiry takes capacity away and no allowance with
    it (SPEC: capacity counts unexpired purchases only), so the capacity after each one
    also lacks every purchase expiring before it."""
    until = expiring_soon_until(org, now)
    soon = sorted(
        (
            p
            for p in purchases
            if p.expired_at is None and p.expires_at is not None and p.expires_at <= until
        ),
        key=lambda p: (p.expires_at or now, str(p.id)),
    )
    zone = ZoneInfo(org.time_zone)
    named = []
    for kind in kinds:
        after = plan.after[kind]
        capacity = after.capacity
        for purchase in soon:
            amount = purchase.amount(kind)
            if not amount:
                continue
            capacity -= amount
            over = after.allocated - capacity
            if over <= 0:
                continue
            expires_at = purchase.expires_at or now
            day = expires_at.astimezone(zone)
            named.append(
                ExpiringPurchase(
                    purchase_id=str(purchase.id),
                    kind=kind.value,
                    amount=amount,
                    expires_at=expires_at,
                    capacity_after=capacity,
                    allocated_after=after.allocated,
                    over=over,
                    message=(
                        f"The purchase of {fmt(amount)} {kind.value} tokens expiring on"
                        f" {day.day} {day:%b %Y} funds part of this; after it expires the"
                        f" organization would be {fmt(over)} over."
                    ),
                )
            )
    return sorted(named, key=lambda e: (e.expires_at, e.kind))


def _token(
    org: Organization,
    before: dict[Kind, int],
    rows: Sequence[allowance_service.Request | _Ref],
) -> str:
    """Names exactly what a preview shows: the organization, each kind's balance, and each
    chosen user with their version and their allowances before and after (and any user
    named who isn't there)."""
    parts = [str(org.id)]
    parts += [f"{kind}={before[kind]}" for kind in sorted(before)]
    for r in rows:
        if isinstance(r, _Ref):
            parts.append(f"?{r.user}")
            continue
        values = ",".join(
            f"{kind}:{r.user.allowance(kind)}>{r.allowances[kind]}" for kind in sorted(r.allowances)
        )
        parts.append(f"{r.user.id}@{r.user.version}:{values}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


async def commit(
    session: AsyncSession, act: Act, distribution: Distribution, preview_token: str | None
) -> Distribution:
    """Write a previewed distribution in this transaction: both kinds, every row, or
    nothing. With a `preview_token`, only if it names this distribution (else
    PreviewStale); a plan with refused rows raises AllowanceChangeRefused."""
    if preview_token is not None and preview_token != distribution.preview_token:
        raise PreviewStale(
            "The balance or the users changed since that preview; nothing was saved."
            " Preview again, check it, and apply the new preview.",
        )
    await allowance_service.apply(
        session, act, distribution.org, distribution.plan, reason=distribution.reason
    )
    distribution.applied = True
    return distribution


async def apply(
    session: AsyncSession,
    act: Act,
    org: Organization,
    request: DistributionRequest,
    preview_token: str | None,
) -> Distribution:
    """Preview and commit in one transaction (see `commit`)."""
    return await commit(session, act, await preview(session, act, org, request), preview_token)
