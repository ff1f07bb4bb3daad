"""drop the users' index on last activity: metering's updates stay in place

Metering writes a user's last activity at most once a minute (`ACTIVITY_RESOLUTION`), and
each such write changed an indexed column, so PostgreSQL could not make it a heap-only
(HOT) update: the user's row took a new entry in every index of `users`, the two trigram
(GIN) ones among them. At 100,000 users, where a batch's 1,000 users have mostly not
metered in the last minute, the users' UPDATE of a batch took 53-63 ms with the index and
6-11 ms once it could be made in place; a batch spends about 52 ms of PostgreSQL's time in
all.

The index served no query: the user table's sort by last activity puts the never-active
users first (ascending) or last (descending), which an index in its default order can't
give, so PostgreSQL sorts the organization's rows either way (the same 34-39 ms at
100,000 users with and without it, measured), and SQLite sorts the part of the order the
index doesn't give (0.16-0.28 s either way); the policy's query of idle users reads the
organization's users whichever way the index goes.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 21:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_users_org_id_last_activity_at", table_name="users")


def downgrade() -> None:
    op.create_index("ix_users_org_id_last_activity_at", "users", ["org_id", "last_activity_at"])
