"""events and alerts: what an administrator should hear of, fired once per crossing

`events`: one row per crossing (a user passing a threshold of an allowance, the balance
falling low, a purchase expiring, a period beginning, a token request made or decided),
unique per organization and dedupe `key`, so concurrent writers of one crossing insert
one row. `alert_states`: whether a condition that re-arms (a kind's balance is low, the
organization is over-allocated) holds, and its episode, the number in its events' keys.
organizations: the alert settings, `alert_thresholds` (percents of an allowance,
[80, 100] by default) and `alert_balance_below_percent` (10: a kind's balance below 10 %
of its capacity is low).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tokenadmin.models.base import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_events_org_id_organizations")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_events_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("org_id", "key", name=op.f("uq_events_org_id")),
    )
    op.create_index("ix_events_org_id_created_at", "events", ["org_id", "created_at"])
    op.create_index("ix_events_user_id_created_at", "events", ["user_id", "created_at"])
    op.create_table(
        "alert_states",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("subject", sa.String(length=60), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("changed_at", UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_alert_states_org_id_organizations")
        ),
        sa.PrimaryKeyConstraint("org_id", "subject", name=op.f("pk_alert_states")),
    )
    op.add_column(
        "organizations",
        sa.Column(
            "alert_thresholds", sa.JSON(), nullable=False, server_default=sa.text("'[80, 100]'")
        ),
    )
    op.add_column(
        "organizations",
        sa.Column(
            "alert_balance_below_percent",
            sa.Integer(),
            nullable=False,
            server_default=sa.text("10"),
        ),
    )


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("alert_balance_below_percent")
        batch.drop_column("alert_thresholds")
    op.drop_table("alert_states")
    op.drop_index("ix_events_user_id_created_at", table_name="events")
    op.drop_index("ix_events_org_id_created_at", table_name="events")
    op.drop_table("events")
