"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from tokenadmin.database import Database
from tokenadmin.models import Base

# Objects only the migrations know, on purpose: the database-specific search indexes.
MIGRATION_ONLY = ("user_search", "ix_users_name_trgm", "ix_users_email_trgm")


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [d for d in compare_metadata(context, Base.metadata) if not _expected(d)]


def _expected(difference: Any) -> bool:
    return any(name in repr(difference) for name in MIGRATION_ONLY)


async def test_the_migrated_schema_matches_the_models(db: Database) -> None:
    async with db.engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []
