"""journal hash chains, and (PostgreSQL) a journal that cannot be changed

Every entry gets `prev_hash` and `hash` (see tokenadmin/journal/chain.py), users and
organizations the head of their chain; existing entries are chained here, in id order.
On PostgreSQL a trigger then refuses every UPDATE, DELETE and TRUNCATE of journal rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 07:45:00
"""

from __future__ import annotations

from typing import Any, cast

import sqlalchemy as sa
from alembic import op

from tokenadmin.journal import chain
from tokenadmin.models import JournalEntry, Organization, User

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APPEND_ONLY = """
CREATE FUNCTION journal_entries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'journal entries are never changed or removed'
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    with op.batch_alter_table("journal_entries") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    for table in ("users", "organizations"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("journal_head", sa.String(64), nullable=True))
    _chain_existing_entries()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY)
        op.execute(
            "CREATE TRIGGER journal_entries_append_only BEFORE UPDATE OR DELETE"
            " ON journal_entries FOR EACH ROW EXECUTE FUNCTION journal_entries_append_only()"
        )
        op.execute(
            "CREATE TRIGGER journal_entries_no_truncate BEFORE TRUNCATE"
            " ON journal_entries FOR EACH STATEMENT"
            " EXECUTE FUNCTION journal_entries_append_only()"
        )


def _chain_existing_entries() -> None:
    bind = op.get_bind()
    entries = cast(sa.Table, JournalEntry.__table__)
    columns = [entries.c.id, *(entries.c[name] for name in chain.CONTENT)]
    heads: dict[chain.Chain, str] = {}
    updates: list[dict[str, Any]] = []
    for row in bind.execute(sa.select(*columns).order_by(entries.c.id)):
        entry = row._mapping
        key = chain.chain_of(entry)
        previous = heads.get(key)
        heads[key] = chain.link(previous, entry)
        updates.append({"entry_id": row.id, "new_prev": previous, "new_hash": heads[key]})
    if updates:
        bind.execute(
            entries.update()
            .where(entries.c.id == sa.bindparam("entry_id"))
            .values(prev_hash=sa.bindparam("new_prev"), hash=sa.bindparam("new_hash")),
            updates,
        )
    for kind, model in (("user", User), ("organization", Organization)):
        table = cast(sa.Table, model.__table__)
        rows = [{"owner": owner, "head": head} for (k, owner), head in heads.items() if k == kind]
        if rows:
            bind.execute(
                table.update()
                .where(table.c.id == sa.bindparam("owner"))
                .values(journal_head=sa.bindparam("head")),
                rows,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER journal_entries_no_truncate ON journal_entries")
        op.execute("DROP TRIGGER journal_entries_append_only ON journal_entries")
        op.execute("DROP FUNCTION journal_entries_append_only()")
    for table in ("organizations", "users"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("journal_head")
    with op.batch_alter_table("journal_entries") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
