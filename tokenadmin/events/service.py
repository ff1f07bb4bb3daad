"""Emitting events: one row per crossing, whoever sees it first.

Every caller names the crossing with a dedupe `key`, unique per organization; the row is
inserted with INSERT .. ON CONFLICT DO NOTHING in the caller's transaction, so of many
requests or server processes that see the same crossing exactly one inserts it, and an
event is only there when the change that caused it committed."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.events import repository


class EventKind:
    """The stable names of the event kinds (docs/events.md)."""

    allowance_threshold = "allowance.threshold"
    balance_low = "balance.low"
    organization_over_allocated = "organization.over_allocated"
    purchase_expiring = "purchase.expiring"
    purchase_expired = "purchase.expired"
    period_began = "period.began"
    token_request_made = "token_request.made"
    token_request_decided = "token_request.decided"
    policy_moved = "policy.moved"


KINDS = tuple(value for name, value in vars(EventKind).items() if not name.startswith("_"))


async def emit(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    kind: str,
    *,
    key: str,
    message: str,
    data: dict[str, Any],
    user_id: uuid.UUID | None = None,
) -> bool:
    """Record the event named by `key` once per organization; True when this call did."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return await repository.insert_once(
        session,
        org_id=org_id,
        user_id=user_id,
        kind=kind,
        key=key[:200],
        data=data,
        message=message,
        created_at=act.now,
    )
