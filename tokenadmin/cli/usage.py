"""`tokenadmin usage ...`, `tokenadmin journal ...` and `tokenadmin key ...`."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.principal import SCOPES
from tokenadmin.cli.common import (
    Cli,
    Json,
    OrgOption,
    actor,
    find_org,
    find_user,
    now_act,
    out,
    parse_moment,
    say,
    table,
)
from tokenadmin.clock import SystemClock
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError
from tokenadmin.journal import repository as journal_repository
from tokenadmin.journal.schemas import JournalEntryOut
from tokenadmin.journal.service import JournalFilter
from tokenadmin.models import ApiKey
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.schemas import ApiKeyCreated, ApiKeyOut
from tokenadmin.tokens import Kind
from tokenadmin.usage import service as usage_service
from tokenadmin.usage.endpoints import answer_of
from tokenadmin.user import repository as user_repository
from tokenadmin.user.schemas import UserBalanceOut

usage_app = typer.Typer(help="Metering: record usage, see what a user has left.")
journal_app = typer.Typer(help="The journal: every change of tokens, newest first.")
key_app = typer.Typer(help="API keys of an organization: create, list, revoke.")

UserOption = Annotated[str, typer.Option("--user", metavar="USER", help="The user's email or id.")]


# --- usage --------------------------------------------------------------------------------


@usage_app.command("record")
def usage_record(
    ctx: typer.Context,
    user: UserOption,
    tokens: Annotated[str, typer.Option(metavar="AMOUNT", help="Tokens used, e.g. 1500 or 1.5K.")],
    kind: Annotated[Kind, typer.Option(help="inference or training.")] = Kind.inference,
    key: Annotated[
        str | None,
        typer.Option(
            "--key",
            help="Idempotency key: recording again with the same key changes nothing"
            " (default: a new key).",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model name, kept in the journal.")] = None,
    json_output: Json = False,
) -> None:
    """Record usage for a user, as the platform's back end does through the API."""
    cli = Cli.of(ctx, json_output)
    amount = cli.amount("--tokens", tokens, positive=True)
    assert amount is not None
    if key is not None and (not key or len(key) > 255 or not key.isprintable()):
        cli.fail(
            InvalidRequest(
                "Idempotency keys are 1 to 255 printable characters.",
                code="invalid_idempotency_key",
            )
        )
    operation = usage_service.Operation(
        "usage",
        user=user.strip(),
        kind=kind,
        tokens=amount,
        details={"model": model} if model else None,
        idempotency_key=key or f"cli-{uuid.uuid4()}",
    )
    settings = cli.settings()
    caller = usage_service.Caller(actor(), None, "platform")

    async def work(db: Database) -> dict[str, Any]:
        answers = await usage_service.run(
            db,
            SystemClock(),
            caller,
            [operation],
            answer=answer_of,
            default_ttl=settings.reservation_ttl_seconds,
            idempotency_ttl=timedelta(hours=settings.idempotency_ttl_hours),
        )
        answer = answers[0]
        if answer.status_code >= 400:
            error = answer.body["error"]
            raise TokenAdminError(
                error["message"], code=error["code"], details=error.get("details")
            )
        return {**answer.body, "replayed": answer.replayed}

    body = cli.run(work)
    if cli.emit_if_json(body):
        return
    again = " (already recorded with this key; nothing changed)" if body["replayed"] else ""
    say(
        f"Recorded {body['tokens']:,} {body['kind']} tokens for {body['email']}{again};"
        f" {body['remaining']:,} remain this period."
    )


@usage_app.command("balance")
def usage_balance(ctx: typer.Context, user: UserOption, json_output: Json = False) -> None:
    """What a user may still use of each kind: min(user remaining, organization remaining)."""
    cli = Cli.of(ctx, json_output)

    async def work(db: Database) -> UserBalanceOut:
        act = now_act()
        now = act.now
        found = await db.read(lambda session: find_user(session, user))
        await organization_service.up_to_date(db, found.org_id, act.now)

        async def look(session: AsyncSession) -> UserBalanceOut:
            fresh = await find_user(session, str(found.id))
            org = await find_org(session, str(fresh.org_id))
            kinds = await usage_service.availability(session, org, fresh, now)
            return UserBalanceOut.of(fresh, org, kinds, now)

        return await db.read(look)

    balance = cli.run(work)
    if cli.emit_if_json(balance):
        return
    rows = [
        (
            kind,
            b.allowance,
            b.used,
            b.reserved,
            b.remaining,
            b.organization_remaining,
            b.available,
        )
        for kind, b in (("inference", balance.inference), ("training", balance.training))
    ]
    columns = ("kind", "allowance", "used", "reserved", "remaining", "org remaining", "available")
    ends = f", period ends {balance.period_end:%Y-%m-%d %H:%M} UTC" if balance.period_end else ""
    out().print(table(f"{balance.email} ({balance.status}{ends})", columns, rows))


# --- journal ------------------------------------------------------------------------------


@journal_app.command("list")
def journal_list(
    ctx: typer.Context,
    org: OrgOption,
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only this user (email or id).")
    ] = None,
    kind: Annotated[Kind | None, typer.Option(help="Only this kind.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. usage or allowance_changed.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="WHEN", help="From this date or time (in the org's time zone)."),
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="WHEN", help="Before this date or time.")
    ] = None,
    before_id: Annotated[
        int | None, typer.Option(min=1, help="Only entries older than this id (paging).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most entries shown.")] = 50,
    json_output: Json = False,
) -> None:
    """Read an organization's journal, newest first."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> tuple[list[JournalEntryOut], dict[str, str]]:
        found = await find_org(session, org)
        who = await find_user(session, user, found) if user is not None else None
        query = JournalFilter(
            org_id=found.id,
            user_id=who.id if who else None,
            kind=kind,
            action=action,
            since=parse_moment("--since", since, found.time_zone),
            until=parse_moment("--until", until, found.time_zone),
            before_id=before_id,
            limit=limit,
        )
        entries = await journal_repository.list_entries(session, query)
        user_ids = sorted({e.user_id for e in entries if e.user_id is not None})
        named = await user_repository.find_in_org(session, found.id, ids=user_ids)
        return [JournalEntryOut.of(e) for e in entries], {str(u.id): u.email for u in named}

    entries, emails = cli.read(work)
    if cli.emit_if_json(entries):
        return
    if not entries:
        say("No journal entries match.")
        return
    rows = [
        (
            str(e.id),
            e.created_at,
            e.actor,
            e.action,
            e.kind,
            emails.get(str(e.user_id), "") if e.user_id else "",
            e.amount,
            _deltas(e),
            e.reason,
        )
        for e in entries
    ]
    columns = ("id", "time (UTC)", "actor", "action", "kind", "user", "amount", "moved", "reason")
    out().print(table(None, columns, rows))
    if len(entries) == limit:
        say(f"Older entries: add --before-id {entries[-1].id}", style="dim")


def _deltas(entry: JournalEntryOut) -> str:
    parts = []
    for name in ("capacity", "allocated", "allowance", "used", "reserved"):
        delta = getattr(entry, f"{name}_delta")
        if delta:
            parts.append(f"{name} {delta:+,}")
    return ", ".join(parts)


# --- API keys -----------------------------------------------------------------------------


@key_app.command("create")
def key_create(
    ctx: typer.Context,
    org: OrgOption,
    name: Annotated[str, typer.Option(help="What the key is for, e.g. platform-backend.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="admin, read or usage; repeat for several (default: usage).",
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Create an API key for an organization; the key is printed alone, once."""
    cli = Cli.of(ctx, json_output)
    scopes = scope or ["usage"]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        cli.fail(
            InvalidRequest(
                f"Unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)}.",
            )
        )
    key_name = cli.name(name)

    async def work(session: AsyncSession, act: Act) -> ApiKeyCreated:
        found = await find_org(session, org)
        key, secret = await api_key_service.create(
            session, act, org_id=found.id, name=key_name, scopes=scopes
        )
        return ApiKeyCreated(**ApiKeyOut.of(key).model_dump(), key=secret)

    created = cli.write(work)
    if cli.emit_if_json(created):
        return
    typer.echo(created.key)
    typer.echo(
        f"Created key '{created.name}' ({created.id}, scopes {' '.join(created.scopes)})."
        " It is shown only this once.",
        err=True,
    )


@key_app.command("list")
def key_list(ctx: typer.Context, org: OrgOption, json_output: Json = False) -> None:
    """List an organization's API keys (never the keys themselves)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> list[ApiKeyOut]:
        found = await find_org(session, org)
        return [ApiKeyOut.of(k) for k in await api_key_service.list_keys(session, found.id)]

    keys = cli.read(work)
    if cli.emit_if_json(keys):
        return
    if not keys:
        say("No API keys yet: tokenadmin key create --org ORG --name NAME --scope usage")
        return
    rows = [
        (str(k.id), k.name, k.prefix + "…", " ".join(k.scopes), k.created_at, k.revoked_at)
        for k in keys
    ]
    columns = ("id", "name", "starts with", "scopes", "created (UTC)", "revoked (UTC)")
    out().print(table(None, columns, rows))


async def _find_key(session: AsyncSession, org_id: uuid.UUID, ref: str) -> ApiKey:
    keys = await api_key_service.list_keys(session, org_id)
    try:
        wanted = uuid.UUID(ref)
        matches = [k for k in keys if k.id == wanted]
    except ValueError:
        # The key itself, or the first characters `key list` shows.
        matches = [k for k in keys if k.key_hash == api_key_service.hash_key(ref)]
        if not matches and len(ref) >= 6:
            matches = [k for k in keys if k.prefix.startswith(ref) or ref.startswith(k.prefix)]
    if len(matches) != 1:
        problem = "names several keys" if matches else "names no key"
        raise NotFound(f"'{ref}' {problem} of this organization.", details={"key": ref})
    return matches[0]


@key_app.command("revoke")
def key_revoke(
    ctx: typer.Context,
    org: OrgOption,
    key: Annotated[str, typer.Argument(help="Key id, the key, or the start `key list` shows.")],
    json_output: Json = False,
) -> None:
    """Revoke an API key; it stops working at once."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> ApiKeyOut:
        found = await find_org(session, org)
        target = await _find_key(session, found.id, key)
        return ApiKeyOut.of(await api_key_service.revoke(session, act, found.id, target.id))

    revoked = cli.write(work)
    if cli.emit_if_json(revoked):
        return
    say(f"Revoked key '{revoked.name}' ({revoked.id}).")
