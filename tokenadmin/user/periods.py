from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.journal.service import record
from tokenadmin.models import Organization, User
from tokenadmin.tokens import Kind


def start_current_period(
    session: AsyncSession, act: Act, org: Organization, user: User, start: datetime
) -> None:
    """Restart a user's counters when a new period has begun since they were last written.

    Usage of a past period goes to 0 with a `period_reset` entry that keeps the amount, so
    past periods stay in the journal; open reservations carry over.
    """
    if user.period_start == start:
        return
    reset_usage(session, act, org, user)
    user.period_start = start


def reset_usage(session: AsyncSession, act: Act, org: Organization, user: User) -> None:
    """Put the user's usage of the period their counters belong to back to 0, each kind
    with a `period_reset` entry that keeps the amount."""
    for kind in Kind:
        used = user.used(kind)
        if used:
            record(
                session,
                act,
                org,
                "period_reset",
                kind=kind,
                user=user,
                amount=used,
                used=-used,
                details={"period_start": user.period_start.isoformat()},
            )
