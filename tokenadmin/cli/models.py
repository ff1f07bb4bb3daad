"""`tokenadmin models ...`: per-model rates (the platform's defaults and an organization's
own), which models an organization may use, and its upstream; `tokenadmin personal-key
...`: a user's own API keys. Upstream keys are read from standard input, never from the
command line (where other users of the machine could read them), and never printed."""

from __future__ import annotations

import sys
import uuid
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.api_key.schemas import PersonalKeyCreated, PersonalKeyOut
from tokenadmin.catalog import repository, service
from tokenadmin.catalog.schemas import (
    AccessOut,
    CatalogModelOut,
    OrganizationModelsOut,
    UpstreamOut,
)
from tokenadmin.catalog.service import parse_rate
from tokenadmin.cli.common import Cli, Json, OrgOption, find_org, find_user, out, say, table
from tokenadmin.errors import InvalidRate, InvalidRequest, ModelNotFound

models_app = typer.Typer(
    help="Models: per-model rates (the platform's and an organization's own), model access"
    " and upstreams."
)
personal_key_app = typer.Typer(help="A user's own API keys: create, list, revoke.")

ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help="The model's name.")]
OrgOrPlatform = Annotated[
    str | None,
    typer.Option(
        "--org",
        metavar="ORG",
        help="Organization id or exact name [default: the platform's defaults].",
    ),
]
UserOption = Annotated[str, typer.Option("--user", metavar="USER", help="The user's email or id.")]


def _stdin_secret(cli: Cli, what: str) -> str:
    secret = sys.stdin.readline().strip()
    if not secret:
        cli.fail(InvalidRequest(f"Standard input held no {what}."))
    return secret


async def _stored(session: AsyncSession, org_id: uuid.UUID | None, name: str) -> CatalogModelOut:
    service.check_name(name)
    row = await repository.named(session, org_id, name)
    if row is None:
        raise ModelNotFound(f"There is no model '{name}' here.")
    return CatalogModelOut.of(row)


@models_app.command("list")
def models_list(ctx: typer.Context, org: OrgOrPlatform = None, json_output: Json = False) -> None:
    """The platform's models, or with --org every model as the organization sees it:
    the rates that apply, whose they are, whether it may use it, and its upstream."""
    cli = Cli.of(ctx, json_output)
    settings = cli.settings()
    if org is None:

        async def platform(session: AsyncSession) -> list[CatalogModelOut]:
            return [CatalogModelOut.of(row) for row in await repository.rows_for(session, None)]

        rows = cli.read(platform)
        if cli.emit_if_json(rows):
            return
        platform_columns = ("model", "prompt rate", "completion rate", "upstream", "upstream key")
        shown = [
            (
                r.name,
                f"{r.prompt_rate:f}",
                f"{r.completion_rate:f}",
                r.upstream_base_url,
                "set" if r.upstream_api_key_set else None,
            )
            for r in rows
        ]
        out().print(table(None, platform_columns, shown))
        say(f"{len(rows):,} platform models.")
        return

    async def merged(session: AsyncSession) -> OrganizationModelsOut:
        found = await find_org(session, org)
        return OrganizationModelsOut.of(
            found, await service.models_for(session, found.id, settings)
        )

    listed = cli.read(merged)
    if cli.emit_if_json(listed):
        return
    columns = ("model", "prompt rate", "completion rate", "rates of", "allowed", "upstream")
    rows_shown = [
        (
            m.name,
            f"{m.prompt_rate:f}",
            f"{m.completion_rate:f}",
            m.source,
            m.allowed,
            m.upstream_configured,
        )
        for m in listed.models
    ]
    out().print(table(None, columns, rows_shown))
    access = "all models" if listed.allowed_models is None else ", ".join(listed.allowed_models)
    upstream = listed.upstream.base_url or "none of its own"
    key = " (key set)" if listed.upstream.api_key_set else ""
    say(f"Allowed: {access or 'no models'}. Upstream: {upstream}{key}.")


@models_app.command("set")
def models_set(
    ctx: typer.Context,
    name: ModelArgument,
    prompt_rate: Annotated[
        str, typer.Option(metavar="RATE", help="Tokens charged per prompt token, e.g. 0.5.")
    ],
    completion_rate: Annotated[
        str, typer.Option(metavar="RATE", help="Tokens charged per completion token, e.g. 1.5.")
    ],
    org: OrgOrPlatform = None,
    upstream_base_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="The model's own OpenAI-compatible server."),
    ] = None,
    upstream_api_key_stdin: Annotated[
        bool,
        typer.Option(
            "--upstream-api-key-stdin",
            help="Read the upstream's key from standard input [default: keep the stored one].",
        ),
    ] = False,
    upstream_model: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="The name sent upstream [default: the model's]."),
    ] = None,
    max_output_tokens: Annotated[
        str | None,
        typer.Option(
            metavar="AMOUNT", help="Completion tokens reserved when a request names no max."
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Set a model's rates (exact decimals) and where its requests go: the platform's
    default, or with --org the organization's own."""
    cli = Cli.of(ctx, json_output)
    cap = cli.amount("--max-output-tokens", max_output_tokens, positive=True)
    try:
        rates = (
            parse_rate(prompt_rate, "--prompt-rate"),
            parse_rate(completion_rate, "--completion-rate"),
        )
    except InvalidRate as error:
        cli.fail(error)
    api_key: str | service.Unset = service.UNSET
    if upstream_api_key_stdin:
        api_key = _stdin_secret(cli, "upstream API key")

    async def work(session: AsyncSession, act: Act) -> CatalogModelOut:
        org_id = None if org is None else (await find_org(session, org)).id
        await service.set_model(
            session,
            act,
            org_id,
            name,
            prompt_rate=rates[0],
            completion_rate=rates[1],
            upstream_base_url=upstream_base_url,
            upstream_api_key=api_key,
            upstream_model=upstream_model,
            max_output_tokens=cap,
        )
        return await _stored(session, org_id, name)

    saved = cli.write(work)
    if cli.emit_if_json(saved):
        return
    whose = "the platform" if org is None else org
    say(
        f"{saved.name} for {whose}: prompt {saved.prompt_rate:f}, completion"
        f" {saved.completion_rate:f} tokens per token."
    )


@models_app.command("delete")
def models_delete(
    ctx: typer.Context, name: ModelArgument, org: OrgOrPlatform = None, json_output: Json = False
) -> None:
    """Remove a platform model, or with --org the organization's own rates of it (the
    platform's apply again)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> CatalogModelOut:
        org_id = None if org is None else (await find_org(session, org)).id
        removed = await _stored(session, org_id, name)
        await service.delete_model(session, act, org_id, name)
        return removed

    removed = cli.write(work)
    if not cli.emit_if_json(removed):
        say(f"Removed {removed.name} from {'the platform' if org is None else org}.")


@models_app.command("access")
def models_access(
    ctx: typer.Context,
    org: OrgOption,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", metavar="MODEL", help="A model its users may call; repeat."),
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every model of the catalog (the default).")
    ] = False,
    json_output: Json = False,
) -> None:
    """Choose the models an organization's users may call: --allow each, or --all."""
    cli = Cli.of(ctx, json_output)
    if all_models == bool(allow):
        cli.fail(InvalidRequest("Give either --allow MODEL (repeated) or --all."))
    allowed = None if all_models else list(allow or [])

    async def work(session: AsyncSession, act: Act) -> AccessOut:
        found = await find_org(session, org)
        return AccessOut(allowed_models=await service.set_access(session, act, found.id, allowed))

    saved = cli.write(work)
    if not cli.emit_if_json(saved):
        names = saved.allowed_models
        say(f"{org} may use {'every model' if names is None else ', '.join(names)}.")


@models_app.command("upstream")
def models_upstream(
    ctx: typer.Context,
    org: OrgOption,
    base_url: Annotated[
        str | None,
        typer.Option(metavar="URL", help="The organization's OpenAI-compatible server."),
    ] = None,
    api_key_stdin: Annotated[
        bool,
        typer.Option(
            "--api-key-stdin",
            help="Read its key from standard input [default: keep the stored one].",
        ),
    ] = False,
    clear: Annotated[
        bool, typer.Option("--clear", help="No upstream of its own (its key goes too).")
    ] = False,
    json_output: Json = False,
) -> None:
    """Set where an organization's requests go when a model names no upstream of its own."""
    cli = Cli.of(ctx, json_output)
    if clear == (base_url is not None):
        cli.fail(InvalidRequest("Give either --base-url URL or --clear."))
    api_key: str | service.Unset = service.UNSET
    if api_key_stdin:
        api_key = _stdin_secret(cli, "upstream API key")

    async def work(session: AsyncSession, act: Act) -> UpstreamOut:
        found = await find_org(session, org)
        return UpstreamOut.of(await service.set_upstream(session, act, found.id, base_url, api_key))

    saved = cli.write(work)
    if not cli.emit_if_json(saved):
        key = ", key set" if saved.api_key_set else ", no key"
        say(f"{org}'s upstream: {saved.base_url or 'none'}{key if saved.base_url else ''}.")


# --- personal keys ---------------------------------------------------------------------------


@personal_key_app.command("create")
def personal_key_create(
    ctx: typer.Context,
    user: UserOption,
    name: Annotated[str, typer.Option(help="What the key is for, e.g. laptop.")],
    json_output: Json = False,
) -> None:
    """Create a key that acts as the user, with their role; the key is printed alone, once."""
    cli = Cli.of(ctx, json_output)
    key_name = cli.name(name)

    async def work(session: AsyncSession, act: Act) -> PersonalKeyCreated:
        owner = await find_user(session, user)
        key, secret = await api_key_service.create_personal(session, act, owner, name=key_name)
        return PersonalKeyCreated(**PersonalKeyOut.of(key).model_dump(), key=secret)

    created = cli.write(work)
    if cli.emit_if_json(created):
        return
    typer.echo(created.key)
    typer.echo(
        f"Created the personal key '{created.name}' ({created.id}) of {user}."
        " It is shown only this once.",
        err=True,
    )


@personal_key_app.command("list")
def personal_key_list(ctx: typer.Context, user: UserOption, json_output: Json = False) -> None:
    """A user's own keys, revoked ones included (never the keys themselves)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> list[PersonalKeyOut]:
        owner = await find_user(session, user)
        return [
            PersonalKeyOut.of(k) for k in await api_key_service.list_personal(session, owner.id)
        ]

    keys = cli.read(work)
    if cli.emit_if_json(keys):
        return
    rows = [(str(k.id), k.name, f"{k.prefix}…", k.created_at, k.revoked_at) for k in keys]
    out().print(table(None, ("id", "name", "key", "created", "revoked"), rows))
    say(f"{len(keys):,} personal keys.")


@personal_key_app.command("revoke")
def personal_key_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="The key's id.")],
    user: UserOption,
    json_output: Json = False,
) -> None:
    """Revoke one of a user's keys; it stops working at once."""
    cli = Cli.of(ctx, json_output)
    kid = cli.id_of(key_id, "key")

    async def work(session: AsyncSession, act: Act) -> PersonalKeyOut:
        owner = await find_user(session, user)
        return PersonalKeyOut.of(await api_key_service.revoke_personal(session, act, owner, kid))

    revoked = cli.write(work)
    if not cli.emit_if_json(revoked):
        say(f"Revoked the personal key '{revoked.name}' of {user}.")
