"""CLI tests run the `tokenadmin` command in-process (typer's CliRunner) against the test
database of `database_url`, on SQLite and PostgreSQL. They are plain `def` tests: the
command runs its own event loop. Each takes the `db` fixture too, which empties the
PostgreSQL tables before and runs `verify` after."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from typer.testing import CliRunner, Result

from tokenadmin.cli.main import app
from tokenadmin.database import Database

T = TypeVar("T")


class Tokenadmin:
    """`tokenadmin --database-url URL ...`, asserting the exit code it expects."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.runner = CliRunner()

    def __call__(self, *args: str, expect: int = 0, input: str | None = None) -> Result:
        result = self.runner.invoke(app, ["--database-url", self.database_url, *args], input=input)
        assert result.exit_code == expect, (
            f"exit {result.exit_code}, expected {expect}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
        )
        return result

    def json(self, *args: str, expect: int = 0, input: str | None = None) -> Any:
        return json.loads(self(*args, "--json", expect=expect, input=input).stdout)

    def org(self, name: str = "Acme", inference: str = "10M", training: str = "1M") -> str:
        """A funded organization; returns its id."""
        org_id: str = self.json("org", "create", name)["id"]
        self("purchase", "add", "--org", org_id, "--inference", inference, "--training", training)
        return org_id

    def user(self, org: str, email: str, *options: str) -> dict[str, Any]:
        name = email.split("@")[0].replace(".", " ").title()
        user: dict[str, Any] = self.json(
            "user", "create", "--org", org, "--email", email, "--name", name, *options
        )
        return user

    def query(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Read or change the database directly, outside the CLI."""

        async def main() -> T:
            database = Database(self.database_url, pool_size=1)
            try:
                return await database.write(work)
            finally:
                await database.dispose()

        return asyncio.run(main())


@pytest.fixture
def tokenadmin(database_url: str, db: Database) -> Tokenadmin:
    return Tokenadmin(database_url)
