"""Run the Alembic migrations on the configured database (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext

from tokenadmin.database import Database


def _script_location() -> Path:
    installed = Path(__file__).parent / "migrations"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    config.attributes["database_url"] = database_url
    return config


@dataclass(frozen=True)
class Upgraded:
    """What `upgrade` did: the revision the database was at (None: it had no tables) and
    the one it is at now."""

    before: str | None
    after: str | None

    def __str__(self) -> str:
        if self.before is None:
            return f"Created the tables at revision {self.after}."
        if self.before == self.after:
            return f"Already up to date at revision {self.after}; nothing to do."
        return f"Upgraded from revision {self.before} to {self.after}."


async def revision(database_url: str) -> str | None:
    """The revision the database is at; None if it has no tables of tokenadmin."""
    db = Database(database_url, pool_size=1)
    try:
        async with db.engine.connect() as connection:
            current: str | None = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
            return current
    finally:
        await db.dispose()


def _upgrade(database_url: str, to: str) -> Upgraded:
    before = asyncio.run(revision(database_url))
    command.upgrade(alembic_config(database_url), to)
    return Upgraded(before, asyncio.run(revision(database_url)))


def upgrade(database_url: str, to: str = "head") -> Upgraded:
    """Upgrade the database and say from which revision to which. Works from inside a
    running event loop too (Alembic's environment runs its own loop, so then it runs in a
    thread of its own)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _upgrade(database_url, to)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_upgrade, database_url, to).result()
