"""GET /readyz: whether this server may take traffic — its database answers and its schema is
at the newest migration this code knows. (GET /healthz, in app.py, says only that the process
and its database answer: liveness.)"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from alembic.script import ScriptDirectory
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import __version__
from tokenadmin.database import Database
from tokenadmin.migrate import alembic_config

CHECK_SECONDS = 5.0
"""How long each check may take before it counts as failed (a load balancer's probe waits)."""


@cache
def expected_revisions() -> frozenset[str]:
    """The newest migrations of this code (Alembic's heads), read once per process."""
    return frozenset(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


async def _revisions(session: AsyncSession) -> set[str]:
    rows = await session.execute(text("SELECT version_num FROM alembic_version"))
    return {str(row[0]) for row in rows}


async def checks(db: Database) -> dict[str, dict[str, Any]]:
    """Each check's outcome: {"ok": bool, "message": ...}, the database's before its schema's."""
    try:
        await asyncio.wait_for(
            db.read(lambda session: session.execute(text("SELECT 1"))), CHECK_SECONDS
        )
    except Exception as error:  # whatever keeps it from answering, the answer is "not ready"
        failed = {"ok": False, "message": f"The database did not answer ({type(error).__name__})."}
        skipped = {"ok": False, "message": "Not checked: the database did not answer."}
        return {"database": failed, "migrations": skipped}
    database = {"ok": True, "message": f"The {db.dialect} database answers."}
    expected = sorted(expected_revisions())
    try:
        current = sorted(await asyncio.wait_for(db.read(_revisions), CHECK_SECONDS))
    except Exception:  # no alembic_version table: never migrated
        current = []
    if current == expected:
        migrations = {"ok": True, "message": f"The schema is at revision {', '.join(current)}."}
    elif not current:
        migrations = {
            "ok": False,
            "message": "The database has no migrations applied: run `tokenadmin migrate`.",
        }
    else:
        migrations = {
            "ok": False,
            "message": f"The schema is at revision {', '.join(current)}; this server needs"
            f" {', '.join(expected)}: run `tokenadmin migrate` (or serve the matching version).",
        }
    return {"database": database, "migrations": {**migrations, "revision": current}}


def add_routes(app: FastAPI, db: Database) -> None:
    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Whether this server may take traffic: 200, or 503 naming the check that failed."""
        outcome = await checks(db)
        failed = [name for name, check in outcome.items() if not check["ok"]]
        if not failed:
            body = {"status": "ready", "version": __version__, "checks": outcome}
            return JSONResponse(body)
        first = outcome[failed[0]]["message"]
        error = {
            "code": "not_ready",
            "message": f"Not ready: {first}",
            "details": {"failed": failed, "checks": outcome},
        }
        return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "5"})
