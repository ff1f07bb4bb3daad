"""job leases: background jobs that run once across server processes

`job_leases`: per background job (reservation expiry, period starts and purchase expiry,
idempotency keys, sign-ins, access tokens, and the jobs to come), when it is due next, which
process holds it and until when, and how its last run went.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 09:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tokenadmin.models.base import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=True),
        sa.Column("lease_until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_due_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_started_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_ok", sa.Boolean(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
