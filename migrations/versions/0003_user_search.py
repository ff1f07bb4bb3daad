"""search and sort of the user table at 100,000 users

PostgreSQL: trigram GIN indexes (pg_trgm) on lower(name) and email, which answer the user
table's search, `lower(name) LIKE '%x%' OR email LIKE '%x%'`, without reading every user.
SQLite: an FTS5 table with the trigram tokenizer over the users' names and emails (an
external-content table: it stores only the index, keyed by the users' rowids), kept in
step by triggers; user.repository.search narrows to its matches and then applies the same
LIKE, so the results are exactly those of the LIKE alone. A later migration that rebuilds
the users table on SQLite (a batch "move and copy") drops these triggers and may renumber
the rowids: it must create the triggers again and run
`INSERT INTO user_search(user_search) VALUES ('rebuild')` (tests/test_user_search.py fails
otherwise). VACUUM keeps the rowids.

Both: indexes (org_id, column, id) for the sortable columns whose ties are broken by id,
so a page of a sorted table, and a deep page, is read from an index instead of sorted.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SORT_INDEXES = {
    "ix_users_org_id_name_id": "org_id, name, id",
    "ix_users_org_id_max_tokens_id": "org_id, max_tokens, id",
    "ix_users_org_id_max_train_tokens_id": "org_id, max_train_tokens, id",
}


def upgrade() -> None:
    for name, columns in SORT_INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON users ({columns})")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_users_name_trgm ON users USING gin (lower(name) gin_trgm_ops)")
        op.execute("CREATE INDEX ix_users_email_trgm ON users USING gin (email gin_trgm_ops)")
        return
    op.execute(
        "CREATE VIRTUAL TABLE user_search USING fts5("
        "name, email, content='users', content_rowid='rowid', tokenize='trigram')"
    )
    op.execute(
        "CREATE TRIGGER user_search_insert AFTER INSERT ON users BEGIN"
        " INSERT INTO user_search(rowid, name, email) VALUES (new.rowid, new.name, new.email);"
        " END"
    )
    op.execute(
        "CREATE TRIGGER user_search_delete AFTER DELETE ON users BEGIN"
        " INSERT INTO user_search(user_search, rowid, name, email)"
        " VALUES ('delete', old.rowid, old.name, old.email);"
        " END"
    )
    op.execute(
        "CREATE TRIGGER user_search_update AFTER UPDATE OF name, email ON users BEGIN"
        " INSERT INTO user_search(user_search, rowid, name, email)"
        " VALUES ('delete', old.rowid, old.name, old.email);"
        " INSERT INTO user_search(rowid, name, email) VALUES (new.rowid, new.name, new.email);"
        " END"
    )
    op.execute("INSERT INTO user_search(user_search) VALUES ('rebuild')")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_users_email_trgm")
        op.execute("DROP INDEX ix_users_name_trgm")
    else:
        for trigger in ("user_search_update", "user_search_delete", "user_search_insert"):
            op.execute(f"DROP TRIGGER {trigger}")
        op.execute("DROP TABLE user_search")
    for name in SORT_INDEXES:
        op.execute(f"DROP INDEX {name}")
