"""auto-approval of token requests

organizations: the auto-approval rule, off by default: `auto_approve_enabled`, the largest
amount approved automatically (`auto_approve_max_amount`, tokens of either kind), the largest
number of automatic approvals per user and period (`auto_approve_max_per_period`), and the
allocated share of the capacity, in percent, above which nothing is approved automatically
(`auto_approve_max_allocated_percent`). Plain added columns (no table rebuild on SQLite);
the organization service checks their values.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

COLUMNS = (
    ("auto_approve_enabled", sa.Boolean(), sa.false()),
    ("auto_approve_max_amount", sa.BigInteger(), sa.text("1000000")),
    ("auto_approve_max_per_period", sa.Integer(), sa.text("1")),
    ("auto_approve_max_allocated_percent", sa.Integer(), sa.text("90")),
)


def upgrade() -> None:
    for name, type_, default in COLUMNS:
        op.add_column(
            "organizations", sa.Column(name, type_, nullable=False, server_default=default)
        )


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        for name, _, _ in reversed(COLUMNS):
            batch.drop_column(name)
