"""journal entries by organization and action

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 06:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_journal_entries_org_id_action_id", "journal_entries", ["org_id", "action", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_journal_entries_org_id_action_id", table_name="journal_entries")
