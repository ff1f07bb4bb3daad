"""rule 3's running totals: the period's used and reserved per kind, on the organization

While an organization's capacity binds (allocated above capacity: overallocation on, or a
purchase expired), every metering transaction must check that the organization's usage
of the period stays within its capacity (SPEC rule 3). It summed the used and reserved of
every user of the organization to do so, in each transaction, under the organization's
row lock: a cost that grew with the organization (the bench's spread scenario on
PostgreSQL, once the capacity bound: 1,125 requests/s at 10,000 users, 382 at 100,000).
These four columns keep the sums on that row instead, only while the capacity binds,
when metering locks the row anyway; NULL otherwise, when metering never writes it
(`Organization.counted_usage`). Plain added nullable columns: no table rebuild on
SQLite, and NULL (not kept) is right for every existing organization: the first
metering transaction that needs them sums them.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

COLUMNS = ("used_inference", "used_training", "reserved_inference", "reserved_training")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("organizations", sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("organizations") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
