"""`tokenadmin requests ...`: members' requests for more tokens, and their decisions."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.cli.common import (
    Cli,
    Json,
    find_org,
    find_user,
    lock_user,
    out,
    say,
    table,
)
from tokenadmin.errors import InvalidRequest
from tokenadmin.models import Organization
from tokenadmin.token_request import service
from tokenadmin.token_request.schemas import TokenRequestOut, TokenRequestPage
from tokenadmin.tokens import Kind

requests_app = typer.Typer(
    help="Requests for more tokens: list, ask, approve (possibly another amount), deny,"
    " withdraw; each decided once."
)

RequestId = Annotated[str, typer.Argument(metavar="REQUEST_ID", help="The request's id.")]


class State(StrEnum):
    pending = "pending"
    approved = "approved"
    denied = "denied"
    withdrawn = "withdrawn"
    any = "any"


def _show(cli: Cli, found: TokenRequestOut, message: str) -> None:
    if not cli.emit_if_json(found):
        say(message)


def _decide(cli: Cli, request_id: uuid.UUID, decide: service.Decision) -> TokenRequestOut:
    """Decide with the request's organization locked, in one transaction."""

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        org = await service.lock_org_of(session, act, request_id)
        return await decide(session, act, org)

    return cli.write(work)


@requests_app.command("list")
def requests_list(
    ctx: typer.Context,
    org: Annotated[
        str | None, typer.Option("--org", metavar="ORG", help="Organization id or exact name.")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only this user's (email or id).")
    ] = None,
    state: Annotated[
        State | None,
        typer.Option(
            help="pending, approved, denied, withdrawn or any [default: pending with"
            " --org, any with --user only]."
        ),
    ] = None,
    kind: Annotated[Kind | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Requests per page.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Requests to skip.")] = 0,
    json_output: Json = False,
) -> None:
    """An organization's requests (pending by default) or a user's, newest first."""
    cli = Cli.of(ctx, json_output)
    if org is None and user is None:
        cli.fail(InvalidRequest("Give --org, --user or both."))
    chosen = state or (State.pending if org is not None else State.any)

    async def work(session: AsyncSession) -> TokenRequestPage:
        found = await find_org(session, org) if org is not None else None
        who = await find_user(session, user, found) if user is not None else None
        query = service.RequestQuery(
            org_id=found.id if found else None,
            user_id=who.id if who else None,
            state=None if chosen is State.any else chosen.value,
            kind=kind.value if kind else None,
            limit=limit,
            offset=offset,
        )
        return await service.search(session, query)

    page = cli.read(work)
    if cli.emit_if_json(page):
        return
    rows = [
        (
            str(r.id),
            r.email,
            r.kind.value,
            r.amount,
            r.state,
            r.approved_amount,
            r.reason,
            r.note,
            r.created_at,
        )
        for r in page.requests
    ]
    columns = ("id", "email", "kind", "asked", "state", "granted", "reason", "note", "asked at")
    out().print(table(None, columns, rows))
    say(f"{page.total:,} requests ({chosen.value}).")


@requests_app.command("ask")
def requests_ask(
    ctx: typer.Context,
    user: Annotated[str, typer.Option("--user", metavar="USER", help="Who asks (email or id).")],
    kind: Annotated[Kind, typer.Option(help="inference or training.")],
    amount: Annotated[
        str, typer.Option(metavar="AMOUNT", help="Tokens asked for (250000, 250K, 1.5M).")
    ],
    reason: Annotated[str, typer.Option(help="Why the tokens are needed.")],
    json_output: Json = False,
) -> None:
    """Ask for more tokens for a user; pending until an administrator decides, or approved
    at once within the organization's auto-approval rule."""
    cli = Cli.of(ctx, json_output)
    tokens = cli.amount("--amount", amount, positive=True)
    assert tokens is not None

    async def work(session: AsyncSession, act: Act) -> TokenRequestOut:
        asker, org = await lock_user(session, act, user)
        return await service.ask(session, act, org, asker, kind, tokens, reason)

    found = cli.write(work)
    _show(
        cli,
        found,
        f"Asked for {found.amount:,} {found.kind.value} tokens for {found.email}:"
        f" request {found.id}, "
        + (
            "approved at once by the auto-approval rule."
            if found.state == "approved"
            else "pending."
        ),
    )


@requests_app.command("approve")
def requests_approve(
    ctx: typer.Context,
    request_id: RequestId,
    amount: Annotated[
        str | None,
        typer.Option(metavar="AMOUNT", help="Tokens granted [default: the amount asked]."),
    ] = None,
    note: Annotated[str | None, typer.Option(help="A word to the member.")] = None,
    json_output: Json = False,
) -> None:
    """Grant a pending request: the user's allowance of its kind rises by the amount."""
    cli = Cli.of(ctx, json_output)
    rid = cli.id_of(request_id, "request")
    granted = cli.amount("--amount", amount, positive=True)

    async def decide(session: AsyncSession, act: Act, org: Organization) -> TokenRequestOut:
        return await service.approve(session, act, org, rid, amount=granted, note=note)

    found = _decide(cli, rid, decide)
    _show(
        cli,
        found,
        f"Approved: {found.email} gets {found.approved_amount or 0:,} more"
        f" {found.kind.value} tokens.",
    )


@requests_app.command("deny")
def requests_deny(
    ctx: typer.Context,
    request_id: RequestId,
    note: Annotated[str, typer.Option(help="Why not; the member reads it.")],
    json_output: Json = False,
) -> None:
    """Refuse a pending request with a note."""
    cli = Cli.of(ctx, json_output)
    rid = cli.id_of(request_id, "request")

    async def decide(session: AsyncSession, act: Act, org: Organization) -> TokenRequestOut:
        return await service.deny(session, act, org, rid, note=note)

    found = _decide(cli, rid, decide)
    _show(cli, found, f"Denied the request of {found.email}.")


@requests_app.command("withdraw")
def requests_withdraw(ctx: typer.Context, request_id: RequestId, json_output: Json = False) -> None:
    """Take back a pending request for its user."""
    cli = Cli.of(ctx, json_output)
    rid = cli.id_of(request_id, "request")

    async def decide(session: AsyncSession, act: Act, org: Organization) -> TokenRequestOut:
        return await service.withdraw(session, act, org, rid)

    found = _decide(cli, rid, decide)
    _show(cli, found, f"Withdrew the request of {found.email}.")
