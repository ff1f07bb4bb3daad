from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tokenadmin.config import get_settings
from tokenadmin.database import Database
from tokenadmin.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _migrate() -> None:
    url = context.config.attributes.get("database_url") or get_settings().database_url
    db = Database(url, pool_size=1)
    try:
        async with db.engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await db.dispose()


if context.is_offline_mode():
    raise SystemExit("tokenadmin migrations run online only: use `tokenadmin migrate`.")
asyncio.run(_migrate())
