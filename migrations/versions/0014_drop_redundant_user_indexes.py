"""drop the users' indexes that the sort indexes already cover

`(org_id, name)`, `(org_id, max_tokens)` and `(org_id, max_train_tokens)` are prefixes of
the sort indexes `(org_id, name, id)`, `(org_id, max_tokens, id)` and
`(org_id, max_train_tokens, id)` (migration 0003): every query they served, the longer
index serves as well. Each costs a new entry per user written by an update that is not
in place, and an allowance change is never in place (`max_tokens` is indexed): one index
fewer each is a tenth less of a 10,000-user change's UPDATE.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 19:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COVERED = {
    "ix_users_org_id_name": ["org_id", "name"],
    "ix_users_org_id_max_tokens": ["org_id", "max_tokens"],
    "ix_users_org_id_max_train_tokens": ["org_id", "max_train_tokens"],
}


def upgrade() -> None:
    for name in COVERED:
        op.drop_index(name, table_name="users")


def downgrade() -> None:
    for name, columns in COVERED.items():
        op.create_index(name, "users", columns)
