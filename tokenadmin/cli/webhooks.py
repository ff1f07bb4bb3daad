"""`tokenadmin webhooks ...`: an organization's webhook endpoints and their delivery log,
through webhooks.service as the API and the dashboard do. The signing secret is printed
once, by `add` and `rotate-secret`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.cli.common import Cli, Json, OrgOption, find_org, lock_org, out, say, table
from tokenadmin.webhooks import service
from tokenadmin.webhooks.schemas import DeliveryOut, DeliveryPage, WebhookOut, WebhookSecretOut

webhooks_app = typer.Typer(
    help="Signed webhooks of an organization's events: list, add (the secret shown once),"
    " rotate-secret, remove, deliveries (every attempt and its answer), resend."
)

WebhookId = Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The webhook's id.")]
DeliveryId = Annotated[str, typer.Argument(metavar="DELIVERY_ID", help="The delivery's id.")]


class State(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


def _print_secret(made: WebhookSecretOut) -> None:
    say(f"Signing secret of {made.url} (shown only this once; store it with the receiver):")
    out().print(made.secret, soft_wrap=True, markup=False, highlight=False)


@webhooks_app.command("list")
def webhooks_list(ctx: typer.Context, org: OrgOption, json_output: Json = False) -> None:
    """List the organization's webhook endpoints (never their secrets)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> list[WebhookOut]:
        found = await find_org(session, org)
        return await service.list_endpoints(session, found.id)

    hooks = cli.read(work)
    if cli.emit_if_json(hooks):
        return
    rows = [
        (
            h.id,
            h.url,
            ", ".join(h.kinds) if h.kinds else "every kind",
            "on" if h.enabled else "off",
            h.description or "",
        )
        for h in hooks
    ]
    out().print(table("Webhooks", ("id", "url", "events", "state", "description"), rows))
    if not hooks:
        say("No webhooks yet: add one with `tokenadmin webhooks add --org ORG --url URL`.")


@webhooks_app.command("add")
def webhooks_add(
    ctx: typer.Context,
    org: OrgOption,
    url: Annotated[
        str,
        typer.Option("--url", metavar="URL", help="https, or http to 127.0.0.1 or localhost."),
    ],
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", metavar="KIND", help="An event kind to send (repeat it); none: every kind."
        ),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", metavar="TEXT", help="What it is for.")
    ] = None,
    disabled: Annotated[
        bool, typer.Option("--disabled", help="Add it turned off: nothing is sent to it.")
    ] = False,
    json_output: Json = False,
) -> None:
    """Add a webhook endpoint and print its signing secret, shown only this once."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> WebhookSecretOut:
        found = await lock_org(session, act, org)
        return await service.create(
            session,
            act,
            found.id,
            url=url,
            kinds=kind or None,
            enabled=not disabled,
            description=description,
        )

    made = cli.write(work)
    if cli.emit_if_json(made):
        return
    say(f"Added webhook {made.id}.", style="green")
    _print_secret(made)


@webhooks_app.command("rotate-secret")
def webhooks_rotate(
    ctx: typer.Context, webhook: WebhookId, org: OrgOption, json_output: Json = False
) -> None:
    """Give a webhook a new signing secret, printed only this once."""
    cli = Cli.of(ctx, json_output)
    webhook_id = cli.id_of(webhook, "webhook")

    async def work(session: AsyncSession, act: Act) -> WebhookSecretOut:
        found = await lock_org(session, act, org)
        return await service.rotate_secret(session, act, found.id, webhook_id)

    rotated = cli.write(work)
    if cli.emit_if_json(rotated):
        return
    _print_secret(rotated)


@webhooks_app.command("remove")
def webhooks_remove(
    ctx: typer.Context, webhook: WebhookId, org: OrgOption, json_output: Json = False
) -> None:
    """Remove a webhook endpoint and its delivery log."""
    cli = Cli.of(ctx, json_output)
    webhook_id = cli.id_of(webhook, "webhook")

    async def work(session: AsyncSession, act: Act) -> WebhookOut:
        found = await lock_org(session, act, org)
        return await service.delete(session, found.id, webhook_id)

    removed = cli.write(work)
    if not cli.emit_if_json(removed):
        say(f"Removed webhook {removed.id} ({removed.url}).")


def _attempts(d: DeliveryOut) -> str:
    return "; ".join(
        f"{a.at:%Y-%m-%d %H:%M:%S} "
        + (str(a.status_code) if a.status_code is not None else f"no answer ({a.error})")
        for a in d.attempt_log
    )


@webhooks_app.command("deliveries")
def webhooks_deliveries(
    ctx: typer.Context,
    webhook: WebhookId,
    org: OrgOption,
    state: Annotated[State | None, typer.Option(help="Only deliveries in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    json_output: Json = False,
) -> None:
    """A webhook's deliveries, newest first, with every attempt and its answer."""
    cli = Cli.of(ctx, json_output)
    webhook_id = cli.id_of(webhook, "webhook")

    async def work(session: AsyncSession) -> DeliveryPage:
        found = await find_org(session, org)
        return await service.deliveries(
            session, found.id, webhook_id, state=state.value if state else None, limit=limit
        )

    page = cli.read(work)
    if cli.emit_if_json(page):
        return
    rows = [(d.id, d.event_kind, d.state, d.attempts, _attempts(d)) for d in page.deliveries]
    title = f"Deliveries ({page.total})"
    out().print(table(title, ("delivery", "event", "state", "attempts", "answers"), rows))


@webhooks_app.command("resend")
def webhooks_resend(
    ctx: typer.Context, delivery: DeliveryId, org: OrgOption, json_output: Json = False
) -> None:
    """Send a delivered or failed delivery again: a new sequence of attempts, due now."""
    cli = Cli.of(ctx, json_output)
    delivery_id = cli.id_of(delivery, "delivery")

    async def work(session: AsyncSession, act: Act) -> DeliveryOut:
        found = await lock_org(session, act, org)
        return await service.resend(session, act, found.id, delivery_id)

    resent = cli.write(work)
    if not cli.emit_if_json(resent):
        say(f"Delivery {resent.id} is due again; the server sends it within seconds.")
