"""`tokenadmin events`: what administrators are told of (docs/events.md), newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.cli.common import Cli, Json, find_org, find_user, out, say, table
from tokenadmin.errors import InvalidRequest
from tokenadmin.events import service
from tokenadmin.events.schemas import EventPage


def events(
    ctx: typer.Context,
    org: Annotated[
        str | None,
        typer.Option(
            "--org", metavar="ORG", help="Organization id or exact name [default: every one]."
        ),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            metavar="KIND", help="Only this kind (allowance.threshold, balance.low, ...)."
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only this user's (email or id).")
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            metavar="TIME", help="Only events at or after this time (UTC unless it says)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Events per page.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Events to skip.")] = 0,
    json_output: Json = False,
) -> None:
    """Events (notifications) newest first: thresholds passed, low balances, expiring
    purchases, new periods, token requests."""
    cli = Cli.of(ctx, json_output)
    if kind is not None and kind not in service.KINDS:
        cli.fail(
            InvalidRequest(
                f"No event kind '{kind}'; the kinds are {', '.join(service.KINDS)}.",
                details={"field": "kind"},
            )
        )
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)

    async def work(session: AsyncSession) -> EventPage:
        found = await find_org(session, org) if org is not None else None
        who = await find_user(session, user, found) if user is not None else None
        query = service.EventQuery(
            org_id=found.id if found else (who.org_id if who else None),
            user_id=who.id if who else None,
            kind=kind,
            since=since,
            limit=limit,
            offset=offset,
        )
        return await service.search(session, query)

    page = cli.read(work)
    if cli.emit_if_json(page):
        return
    rows = [(e.created_at, e.kind, e.message, e.data.get("email", "")) for e in page.events]
    out().print(table(None, ("when (UTC)", "kind", "what happened", "user"), rows))
    say(f"{page.total:,} {'event' if page.total == 1 else 'events'}.")
