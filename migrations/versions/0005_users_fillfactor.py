"""room for in-place updates of users (PostgreSQL)

Metering rewrites a user's counters on every request. With free room on the row's page
PostgreSQL updates it in place (a HOT update) without touching the table's indexes, the
trigram search indexes among them; with full pages every update rewrites them all. Pages
written from now on keep 30 % free (existing ones as they are rewritten, or at once with
VACUUM FULL users).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 07:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE users SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE users RESET (fillfactor)")
