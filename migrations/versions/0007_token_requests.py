"""token requests: a table of their own, with a state

A member's request for more tokens was an audit entry of the journal
("tokens_requested"), open until the user's allowance of that kind changed. Requests now
live in `token_requests` and are decided once (approved, denied or withdrawn).

The requests that were still open become pending rows: those of the last 90 days (the
window the dashboard showed) of active users whose allowance of that kind has not changed
since, the newest one per user and kind (at most one request per user and kind is
pending). Their journal entries stay as they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 09:00:00
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from alembic import op
from uuid6 import uuid7

from tokenadmin.models.base import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LOOK_BACK = timedelta(days=90)
MAX_AMOUNT = 2**53
KINDS = ("inference", "training")
PENDING_ONLY = sa.text("state = 'pending'")

journal = sa.table(
    "journal_entries",
    sa.column("id", sa.BigInteger),
    sa.column("org_id", sa.Uuid),
    sa.column("user_id", sa.Uuid),
    sa.column("created_at", UTCDateTime()),
    sa.column("actor", sa.String),
    sa.column("action", sa.String),
    sa.column("kind", sa.String),
    sa.column("allowance_delta", sa.BigInteger),
    sa.column("details", sa.JSON),
)
users = sa.table("users", sa.column("id", sa.Uuid), sa.column("status", sa.String))


def upgrade() -> None:
    table = op.create_table(
        "token_requests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("decided_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("approved_amount", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "approved_amount IS NULL OR approved_amount > 0",
            name=op.f("ck_token_requests_approved_amount"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_token_requests_amount")),
        sa.CheckConstraint(
            "kind IN ('inference', 'training')", name=op.f("ck_token_requests_kind")
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'denied', 'withdrawn')",
            name=op.f("ck_token_requests_state"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_token_requests_org_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_token_requests_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_token_requests")),
    )
    op.create_index(
        "ix_token_requests_org_id_state_created_at",
        "token_requests",
        ["org_id", "state", "created_at"],
    )
    op.create_index(
        "ix_token_requests_user_id_created_at", "token_requests", ["user_id", "created_at"]
    )
    op.create_index(
        "uq_token_requests_user_id_kind_pending",
        "token_requests",
        ["user_id", "kind"],
        unique=True,
        sqlite_where=PENDING_ONLY,
        postgresql_where=PENDING_ONLY,
    )
    rows = _open_requests(datetime.now(UTC) - LOOK_BACK)
    if rows:
        op.bulk_insert(table, rows)


def _open_requests(since: datetime) -> list[dict[str, Any]]:
    """The newest request per active user and kind since `since` that no change of that
    allowance answered, as rows of `token_requests`."""
    bind = op.get_bind()
    asked = bind.execute(
        sa.select(
            journal.c.id,
            journal.c.org_id,
            journal.c.user_id,
            journal.c.created_at,
            journal.c.actor,
            journal.c.details,
        )
        .join(users, users.c.id == journal.c.user_id)
        .where(
            journal.c.action == "tokens_requested",
            journal.c.created_at >= since,
            users.c.status == "active",
        )
        .order_by(journal.c.id)
    ).all()
    if not asked:
        return []
    changed = {
        (row.user_id, row.kind): row.last
        for row in bind.execute(
            sa.select(journal.c.user_id, journal.c.kind, sa.func.max(journal.c.id).label("last"))
            .where(journal.c.id > asked[0].id, journal.c.allowance_delta != 0)
            .group_by(journal.c.user_id, journal.c.kind)
        )
    }
    newest: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    for entry in asked:
        details = entry.details if isinstance(entry.details, dict) else {}
        kind, amount = details.get("kind"), details.get("amount")
        if kind not in KINDS or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
            continue
        if changed.get((entry.user_id, kind), 0) > entry.id:
            continue  # answered by a change of the allowance, as the dashboard showed it
        newest[(entry.user_id, kind)] = {
            "id": uuid7(),
            "org_id": entry.org_id,
            "user_id": entry.user_id,
            "kind": kind,
            "amount": amount,
            "reason": str(details.get("reason") or ""),
            "state": "pending",
            "created_at": entry.created_at,
            "created_by": entry.actor,
            "version": 1,
        }
    return list(newest.values())


def downgrade() -> None:
    op.drop_index("uq_token_requests_user_id_kind_pending", table_name="token_requests")
    op.drop_index("ix_token_requests_user_id_created_at", table_name="token_requests")
    op.drop_index("ix_token_requests_org_id_state_created_at", table_name="token_requests")
    op.drop_table("token_requests")
