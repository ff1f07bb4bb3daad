"""Test databases: emptied between tests with the owner's rights."""

from __future__ import annotations

from sqlalchemy import text

from tokenadmin.database import Database
from tokenadmin.models import Base


async def empty_postgres(database: Database) -> None:
    """TRUNCATE every table. The journal refuses TRUNCATE (an append-only trigger), so it
    runs with triggers off, as only the database's owner may."""
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    async with database.engine.begin() as connection:
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
