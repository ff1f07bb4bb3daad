"""the user table's allowance sort orders in a table of their own; room for a whole page
of in-place updates (PostgreSQL)

An allowance change rewrote every index of `users` for each changed user: the sort
indexes `(org_id, max_tokens, id)` and `(org_id, max_train_tokens, id)` hold the
allowances, and an update that changes an indexed column can't be heap-only (HOT). At
100,000 users a 10,000-user change's UPDATE wrote ten index entries per user, the two
trigram (GIN) indexes among them: 400-600 ms of the change.

The sort orders move to `allowance_order` (user, organization, both allowances; its two
sort indexes and its key), kept equal to `users` by triggers, so no writer can forget it:
a row per user inserted, its allowances copied when they change, deleted with the user.
Metering's updates never name the allowances, so they never fire a trigger. Each of the
triggers' statements names the user's organization, as every statement of the metering
and allowance paths does (docs/SCALING.md: a distributed PostgreSQL routes by it). The user
table sorted by an allowance reads the new table's index and then the page's users.

`users` keeps half of each page free (fillfactor 50, was 70): users created together lie
together, an administrator changes them together, and a page whose every user changes
needs room for a second version of each to update them all in place. Pages written from
now on keep that room; existing ones as they are rewritten, or at once with
`VACUUM FULL users`. Measured at 100,000 users, 10,000 consecutive users changed: the
UPDATE took 330-800 ms before (the more, the longer since a vacuum), and 185-250 ms with
every user updated in place, of which this table's row trigger is 120-180 ms.

SQLite has no heap-only updates, and its trigger costs more than the two index entries
it replaces (a 10,000-user change's UPDATEs: 47 ms before, 160-190 ms after); the same
table and triggers keep both databases' schemas and the user table's query one. A future migration that rebuilds `users` on SQLite (a batch "move and
copy") drops its triggers, these and 0003's: it must create them again.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 14:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

SORTS = {
    "ix_users_org_id_max_tokens_id": ["org_id", "max_tokens", "id"],
    "ix_users_org_id_max_train_tokens_id": ["org_id", "max_train_tokens", "id"],
}

POSTGRESQL_TRIGGERS = [
    # New users, a statement at a time: a bulk import or seeding inserts thousands of users
    # in one statement, and one INSERT ... SELECT copies them all.
    """
    CREATE FUNCTION allowance_order_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO allowance_order (user_id, org_id, max_tokens, max_train_tokens)
        SELECT id, org_id, max_tokens, max_train_tokens FROM created;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER allowance_order_insert AFTER INSERT ON users
    REFERENCING NEW TABLE AS created FOR EACH STATEMENT
    EXECUTE FUNCTION allowance_order_insert()
    """,
    # A changed allowance, a row at a time: PostgreSQL allows no column list on a statement
    # trigger with transition tables, and metering updates users all the time. A row
    # trigger with a column list fires only for an UPDATE that names one of the columns.
    """
    CREATE FUNCTION allowance_order_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE allowance_order
        SET org_id = NEW.org_id, max_tokens = NEW.max_tokens,
            max_train_tokens = NEW.max_train_tokens
        WHERE user_id = NEW.id AND org_id = OLD.org_id;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER allowance_order_update
    AFTER UPDATE OF org_id, max_tokens, max_train_tokens ON users FOR EACH ROW
    WHEN (OLD.org_id IS DISTINCT FROM NEW.org_id
          OR OLD.max_tokens IS DISTINCT FROM NEW.max_tokens
          OR OLD.max_train_tokens IS DISTINCT FROM NEW.max_train_tokens)
    EXECUTE FUNCTION allowance_order_update()
    """,
]

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER allowance_order_insert AFTER INSERT ON users BEGIN
        INSERT INTO allowance_order (user_id, org_id, max_tokens, max_train_tokens)
        VALUES (new.id, new.org_id, new.max_tokens, new.max_train_tokens);
    END
    """,
    """
    CREATE TRIGGER allowance_order_update
    AFTER UPDATE OF org_id, max_tokens, max_train_tokens ON users
    WHEN old.org_id IS NOT new.org_id OR old.max_tokens IS NOT new.max_tokens
        OR old.max_train_tokens IS NOT new.max_train_tokens
    BEGIN
        UPDATE allowance_order
        SET org_id = new.org_id, max_tokens = new.max_tokens,
            max_train_tokens = new.max_train_tokens
        WHERE user_id = new.id AND org_id = old.org_id;
    END
    """,
    # SQLite cascades a user's deletion only with foreign keys on (tokenadmin turns them
    # on): a trigger deletes the row whatever the connection's setting.
    """
    CREATE TRIGGER allowance_order_delete AFTER DELETE ON users BEGIN
        DELETE FROM allowance_order WHERE user_id = old.id;
    END
    """,
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "allowance_order",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("max_tokens", sa.BigInteger(), nullable=False),
        sa.Column("max_train_tokens", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_allowance_order_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_allowance_order")),
        # SQLite: stored in its key's order, with no rowid and no separate key index to
        # write besides the row.
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO allowance_order (user_id, org_id, max_tokens, max_train_tokens)"
        " SELECT id, org_id, max_tokens, max_train_tokens FROM users"
    )
    for kind in ("max_tokens", "max_train_tokens"):
        op.create_index(
            f"ix_allowance_order_org_id_{kind}_user_id",
            "allowance_order",
            ["org_id", kind, "user_id"],
        )
    for statement in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        op.execute(statement)
    for name in SORTS:
        op.drop_index(name, table_name="users")
    if postgresql:
        op.execute("ALTER TABLE users SET (fillfactor = 50)")
        op.execute("ANALYZE allowance_order")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("ALTER TABLE users SET (fillfactor = 70)")
    for name, columns in SORTS.items():
        op.create_index(name, "users", columns)
    for trigger in ("allowance_order_insert", "allowance_order_update"):
        op.execute(f"DROP TRIGGER {trigger} ON users" if postgresql else f"DROP TRIGGER {trigger}")
    if postgresql:
        op.execute("DROP FUNCTION allowance_order_insert()")
        op.execute("DROP FUNCTION allowance_order_update()")
    else:
        op.execute("DROP TRIGGER allowance_order_delete")
    op.drop_table("allowance_order")
