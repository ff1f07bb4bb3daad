"""allocation policies: floor, ceiling, auto-increase, reclamation, temporary boosts

`allocation_policies`: per organization and kind, the policy's settings (off until enabled).
`policy_moves`: the log of every allowance change a policy made (each also a journal entry
naming the policy as its cause). `allowance_boosts`: temporary raises with an end.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 11:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tokenadmin.models.base import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "allocation_policies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("preset", sa.String(length=16), nullable=False),
        sa.Column("floor", sa.BigInteger(), nullable=False),
        sa.Column("ceiling", sa.BigInteger(), nullable=False),
        sa.Column("increase_enabled", sa.Boolean(), nullable=False),
        sa.Column("trigger_percent", sa.Integer(), nullable=False),
        sa.Column("bump_percent", sa.Integer(), nullable=True),
        sa.Column("bump_amount", sa.BigInteger(), nullable=True),
        sa.Column("cooldown_hours", sa.Integer(), nullable=False),
        sa.Column("reclaim_enabled", sa.Boolean(), nullable=False),
        sa.Column("idle_days", sa.Integer(), nullable=False),
        sa.Column("reclaim_every_hours", sa.Integer(), nullable=False),
        sa.Column("last_reclaim_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint(
            "kind IN ('inference', 'training')", name=op.f("ck_allocation_policies_kind")
        ),
        sa.CheckConstraint(
            "preset IN ('conservative', 'standard', 'aggressive', 'custom')",
            name=op.f("ck_allocation_policies_preset"),
        ),
        sa.CheckConstraint(
            "floor >= 0 AND floor <= ceiling", name=op.f("ck_allocation_policies_floor_ceiling")
        ),
        sa.CheckConstraint(
            "trigger_percent BETWEEN 1 AND 100",
            name=op.f("ck_allocation_policies_trigger_percent"),
        ),
        sa.CheckConstraint(
            "(bump_percent IS NULL) <> (bump_amount IS NULL)",
            name=op.f("ck_allocation_policies_one_bump"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_allocation_policies_org_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_policies")),
        sa.UniqueConstraint("org_id", "kind", name="uq_allocation_policies_org_id_kind"),
    )
    op.create_table(
        "policy_moves",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("before", sa.BigInteger(), nullable=False),
        sa.Column("after", sa.BigInteger(), nullable=False),
        sa.Column("why", sa.Text(), nullable=False),
        sa.Column("batch", sa.String(length=36), nullable=False),
        sa.Column("boost_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('inference', 'training')", name=op.f("ck_policy_moves_kind")),
        sa.CheckConstraint(
            "rule IN ('increase', 'reclaim', 'boost', 'boost_end')",
            name=op.f("ck_policy_moves_rule"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["organizations.id"], name=op.f("fk_policy_moves_org_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_policy_moves_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_moves")),
    )
    op.create_index("ix_policy_moves_org_id_created_at", "policy_moves", ["org_id", "created_at"])
    op.create_index(
        "ix_policy_moves_user_id_kind_rule_created_at",
        "policy_moves",
        ["user_id", "kind", "rule", "created_at"],
    )
    op.create_table(
        "allowance_boosts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("ends_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=200), nullable=True),
        sa.Column("taken_back", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('inference', 'training')", name=op.f("ck_allowance_boosts_kind")
        ),
        sa.CheckConstraint("state IN ('active', 'ended')", name=op.f("ck_allowance_boosts_state")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_allowance_boosts_amount")),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_allowance_boosts_org_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_allowance_boosts_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allowance_boosts")),
    )
    op.create_index(
        "ix_allowance_boosts_org_id_state_ends_at",
        "allowance_boosts",
        ["org_id", "state", "ends_at"],
    )
    op.create_index("ix_allowance_boosts_user_id_state", "allowance_boosts", ["user_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_allowance_boosts_user_id_state", table_name="allowance_boosts")
    op.drop_index("ix_allowance_boosts_org_id_state_ends_at", table_name="allowance_boosts")
    op.drop_table("allowance_boosts")
    op.drop_index("ix_policy_moves_user_id_kind_rule_created_at", table_name="policy_moves")
    op.drop_index("ix_policy_moves_org_id_created_at", table_name="policy_moves")
    op.drop_table("policy_moves")
    op.drop_table("allocation_policies")
