"""the email trigram index on lower(email), out of reach of equality lookups

pg_trgm's GIN operator class answers `=` as well as `LIKE` (pg_trgm 1.6, PostgreSQL 14),
so the planner could answer `email = ANY(...)` (metering a group that names users by
email, an allowance change by email) from `ix_users_email_trgm` instead of the unique
email index. Each email shares most of its trigrams (`bulk.example`, `@ex`...) with every
other of the organization, so that plan reads most of the table's entries, and the GIN
index's pending list besides. On a small, often-updated organization, metering fell to a
tenth of its rate (1,000 users after pgbench-like load: 350 instead of 3,000 requests/s).
On `lower(email)` (the same values: emails are stored lowercase) the index answers the
user table's search, which now reads `lower(email) LIKE '%x%'`, and no equality on
`email` can use it. SQLite's FTS5 search table is unchanged.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 12:45:00
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_users_email_trgm")
        op.execute("CREATE INDEX ix_users_email_trgm ON users USING gin (lower(email) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_users_email_trgm")
        op.execute("CREATE INDEX ix_users_email_trgm ON users USING gin (email gin_trgm_ops)")
