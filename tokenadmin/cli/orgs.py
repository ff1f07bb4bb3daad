"""`tokenadmin org ...` and `tokenadmin purchase ...`: organizations, policy and capacity."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.cli.common import (
    Cli,
    Json,
    OrgOption,
    find_org,
    lock_org,
    note,
    now_act,
    out,
    parse_moment,
    say,
    table,
)
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest, NotFound
from tokenadmin.events import service as events
from tokenadmin.models import Organization, Purchase
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization import service as organization_service
from tokenadmin.organization.schemas import BalanceOut, OrganizationOut, PurchaseOut
from tokenadmin.tokens import ALLOWANCE_LABEL, DEFAULT_MINIMUM, Kind, Period, fmt

org_app = typer.Typer(help="Organizations: create, list, show and change their policy.")
purchase_app = typer.Typer(help="Purchases: the capacity an organization bought, and expiries.")

INFERENCE, TRAINING = ALLOWANCE_LABEL[Kind.inference], ALLOWANCE_LABEL[Kind.training]


@org_app.command("create")
def org_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    time_zone: Annotated[
        str, typer.Option(help="IANA time zone its periods follow, e.g. Europe/Berlin.")
    ] = "UTC",
    period: Annotated[
        Period, typer.Option(help="monthly: usage restarts each month; none: prepaid.")
    ] = Period.monthly,
    min_inference: Annotated[
        str, typer.Option(metavar="AMOUNT", help=f"Minimum {INFERENCE} of every active user.")
    ] = str(DEFAULT_MINIMUM[Kind.inference]),
    min_training: Annotated[str, typer.Option(metavar="AMOUNT", help=f"Minimum {TRAINING}.")] = str(
        DEFAULT_MINIMUM[Kind.training]
    ),
    overallocation: Annotated[
        bool, typer.Option(help="Allow allocating more than the capacity.")
    ] = False,
    json_output: Json = False,
) -> None:
    """Create an organization (as a platform operator)."""
    cli = Cli.of(ctx, json_output)
    org_name = cli.name(name)
    minimums = (
        cli.amount("--min-inference", min_inference) or 0,
        cli.amount("--min-training", min_training) or 0,
    )

    async def work(session: AsyncSession, act: Act) -> OrganizationOut:
        if any(o.name == org_name for o in await organization_repository.list_all(session)):
            note(f"note: another organization is named '{org_name}'; use ids to tell them apart.")
        org = await organization_service.create(
            session,
            act,
            name=org_name,
            time_zone=time_zone,
            period=period,
            min_inference=minimums[0],
            min_training=minimums[1],
            overallocation=overallocation,
        )
        return OrganizationOut.of(org)

    created = cli.write(work)
    if cli.emit_if_json(created):
        return
    say(f"Created organization {created.name} ({created.id}).")
    say(f"Next: tokenadmin purchase add --org {created.id} --inference 10M")


@org_app.command("list")
def org_list(ctx: typer.Context, json_output: Json = False) -> None:
    """List every organization with its capacity and allocation."""
    cli = Cli.of(ctx, json_output)
    orgs = cli.read(organization_repository.list_all)
    if cli.emit_if_json([OrganizationOut.of(o) for o in orgs]):
        return
    if not orgs:
        say("No organizations yet. Create one with `tokenadmin org create NAME`.")
        return
    rows = [
        (
            str(o.id),
            o.name,
            o.time_zone,
            o.period,
            o.capacity_inference,
            o.allocated_inference,
            o.capacity_training,
            o.allocated_training,
        )
        for o in orgs
    ]
    columns = (
        "id",
        "name",
        "time zone",
        "period",
        "inference cap.",
        "allocated",
        "training cap.",
        "allocated",
    )
    out().print(table(None, columns, rows))


@org_app.command("show")
def org_show(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="Organization id or exact name.")],
    json_output: Json = False,
) -> None:
    """Show an organization: policy, token balance of both kinds, and purchases."""
    cli = Cli.of(ctx, json_output)

    async def work(db: Database) -> dict[str, Any]:
        act = now_act()
        found = await db.read(lambda session: find_org(session, org))
        await organization_service.up_to_date(db, found.id, act.now)

        async def look(session: AsyncSession) -> dict[str, Any]:
            fresh = await organization_service.get(session, found.id)
            balance = await organization_service.balance(session, fresh, act.now)
            purchases = await organization_service.list_purchases(session, fresh)
            return {
                "organization": OrganizationOut.of(fresh),
                "balance": BalanceOut.of(balance),
                "purchases": [PurchaseOut.of(p) for p in purchases],
            }

        return await db.read(look)

    shown = cli.run(work)
    if cli.emit_if_json({key: _dump(value) for key, value in shown.items()}):
        return
    organization: OrganizationOut = shown["organization"]
    balance: BalanceOut = shown["balance"]
    say(f"{organization.name}", style="bold")
    out().print(
        table(
            None,
            ("field", "value"),
            [
                ("id", str(organization.id)),
                ("time zone", organization.time_zone),
                ("period", organization.period.value),
                (f"minimum {INFERENCE}", organization.min_inference),
                (f"minimum {TRAINING}", organization.min_training),
                ("overallocation", organization.overallocation),
                ("auto-approval", _auto_approval_words(organization)),
            ],
        )
    )
    _print_balance(balance)
    _print_purchases(shown["purchases"])


def _auto_approval_words(organization: OrganizationOut) -> str:
    if not organization.auto_approve_enabled:
        return "off"
    return (
        f"on: up to {organization.auto_approve_max_amount:,} tokens,"
        f" {organization.auto_approve_max_per_period} per user and period, while at most"
        f" {organization.auto_approve_max_allocated_percent} % of the capacity is allocated"
    )


def _thresholds(cli: Cli, text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return events.parse_thresholds(text)
    except ValueError as error:
        cli.fail(
            InvalidRequest(f"--alert-thresholds: {error}", details={"field": "alert_thresholds"})
        )


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") for v in value]
    return value.model_dump(mode="json")


def _print_balance(balance: BalanceOut) -> None:
    kinds = {"inference": balance.inference, "training": balance.training}
    period = "prepaid, never resets"
    if balance.period_start is not None and balance.period_end is not None:
        # Instants, not days: a month in Berlin begins at 22:00 or 23:00 UTC the day before.
        period = f"{balance.period_start:%Y-%m-%d %H:%M} to {balance.period_end:%Y-%m-%d %H:%M} UTC"
    rows = [
        (kind, b.capacity, b.allocated, b.balance, b.used, b.reserved) for kind, b in kinds.items()
    ]
    columns = ("kind", "capacity", "allocated", "balance", "used", "reserved")
    out().print(table(f"Token balance, period {period}", columns, rows))
    if balance.over_allocated:
        for kind, b in kinds.items():
            if b.shortfall:
                say(f"{kind}: allocated exceeds capacity by {fmt(b.shortfall)}.", style="red")
    for purchase in balance.expiring_purchases:
        when = f"{purchase.expires_at:%Y-%m-%d %H:%M} UTC" if purchase.expires_at else "?"
        say(f"Purchase {purchase.id} expires {when}.", style="yellow")


def _print_purchases(purchases: list[PurchaseOut]) -> None:
    if not purchases:
        say("No purchases yet: tokenadmin purchase add --org ORG --inference 10M")
        return
    rows = [
        (
            str(p.id),
            p.purchased_on.isoformat(),
            p.inference_amount,
            p.training_amount,
            p.expires_at,
            "expired" if p.expired else "",
            p.payer,
            p.note,
        )
        for p in purchases
    ]
    columns = ("id", "purchased", "inference", "training", "expires (UTC)", "", "payer", "note")
    out().print(table("Purchases", columns, rows))


@org_app.command("update")
def org_update(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="Organization id or exact name.")],
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    time_zone: Annotated[str | None, typer.Option(help="New IANA time zone.")] = None,
    period: Annotated[Period | None, typer.Option(help="monthly or none.")] = None,
    min_inference: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help=f"New minimum {INFERENCE}.")
    ] = None,
    min_training: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help=f"New minimum {TRAINING}.")
    ] = None,
    overallocation: Annotated[
        bool | None,
        typer.Option(
            "--overallocation/--no-overallocation",
            help="Allow or forbid allocating more than the capacity.",
            show_default=False,
        ),
    ] = None,
    auto_approve: Annotated[
        bool | None,
        typer.Option(
            "--auto-approve/--no-auto-approve",
            help="Approve token requests within the auto-approval rule at once, or not.",
            show_default=False,
        ),
    ] = None,
    auto_approve_max_amount: Annotated[
        str | None,
        typer.Option(
            metavar="AMOUNT", help="The largest request (of either kind) approved at once."
        ),
    ] = None,
    auto_approve_max_per_period: Annotated[
        int | None,
        typer.Option(metavar="N", help="Requests of one user approved at once per period."),
    ] = None,
    auto_approve_max_allocated_percent: Annotated[
        int | None,
        typer.Option(
            metavar="PERCENT",
            help="Nothing is approved at once above this share of the capacity allocated.",
        ),
    ] = None,
    alert_thresholds: Annotated[
        str | None,
        typer.Option(
            metavar="PERCENTS",
            help='Alert when a user passes these percents of an allowance ("80,100"; "" for none).',
        ),
    ] = None,
    alert_balance_below: Annotated[
        int | None,
        typer.Option(
            metavar="PERCENT",
            help="Alert when a kind's balance falls below this percent of its capacity (0: never).",
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Change an organization's name or policy."""
    cli = Cli.of(ctx, json_output)
    changes: dict[str, Any] = {
        "name": cli.name(name) if name is not None else None,
        "time_zone": time_zone,
        "period": period,
        "min_inference": cli.amount("--min-inference", min_inference),
        "min_training": cli.amount("--min-training", min_training),
        "overallocation": overallocation,
        "auto_approve_enabled": auto_approve,
        "auto_approve_max_amount": cli.amount("--auto-approve-max-amount", auto_approve_max_amount),
        "auto_approve_max_per_period": auto_approve_max_per_period,
        "auto_approve_max_allocated_percent": auto_approve_max_allocated_percent,
        "alert_thresholds": _thresholds(cli, alert_thresholds),
        "alert_balance_below_percent": alert_balance_below,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        cli.fail(InvalidRequest("Nothing to change: give at least one option."))

    async def work(session: AsyncSession, act: Act) -> OrganizationOut:
        locked = await lock_org(session, act, org)
        return OrganizationOut.of(
            await organization_service.update_policy(session, act, locked, changes)
        )

    updated = cli.write(work)
    if cli.emit_if_json(updated):
        return
    say(f"Updated {updated.name} (version {updated.version}).")


# --- purchases --------------------------------------------------------------------------


@purchase_app.command("add")
def purchase_add(
    ctx: typer.Context,
    org: OrgOption,
    inference: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help="Inference tokens bought, e.g. 10M.")
    ] = None,
    training: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help="Training tokens bought.")
    ] = None,
    purchased_on: Annotated[
        str | None,
        typer.Option(metavar="DATE", help="Purchase date (default: today in the org's zone)."),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            metavar="WHEN", help="Expiry date or time, read in the organization's time zone."
        ),
    ] = None,
    payer: Annotated[str, typer.Option(help="Who paid.")] = "",
    note: Annotated[str, typer.Option(help="A note for the journal.")] = "",
    json_output: Json = False,
) -> None:
    """Record a purchase of tokens (as a platform operator)."""
    cli = Cli.of(ctx, json_output)
    amounts = (
        cli.amount("--inference", inference) or 0,
        cli.amount("--training", training) or 0,
    )
    bought_on: date | None = None
    if purchased_on is not None:
        try:
            bought_on = date.fromisoformat(purchased_on)
        except ValueError:
            cli.fail(
                InvalidRequest(
                    f"--purchased-on: '{purchased_on}' is not a date like 2026-03-01.",
                )
            )

    async def work(session: AsyncSession, act: Act) -> PurchaseOut:
        locked = await lock_org(session, act, org)
        purchase = await organization_service.record_purchase(
            session,
            act,
            locked,
            inference_amount=amounts[0],
            training_amount=amounts[1],
            purchased_on=bought_on,
            expires_at=parse_moment("--expires", expires, locked.time_zone),
            payer=payer,
            note=note,
        )
        return PurchaseOut.of(purchase)

    purchase = cli.write(work)
    if cli.emit_if_json(purchase):
        return
    bought = " and ".join(
        f"{fmt(amount)} {kind}"
        for kind, amount in ((Kind.inference, amounts[0]), (Kind.training, amounts[1]))
        if amount
    )
    expiry = f", expires {purchase.expires_at:%Y-%m-%d %H:%M} UTC" if purchase.expires_at else ""
    say(f"Recorded purchase {purchase.id}: {bought} tokens{expiry}.")


@purchase_app.command("list")
def purchase_list(ctx: typer.Context, org: OrgOption, json_output: Json = False) -> None:
    """List an organization's purchases, expired ones included."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> list[PurchaseOut]:
        found = await find_org(session, org)
        return [
            PurchaseOut.of(p) for p in await organization_service.list_purchases(session, found)
        ]

    purchases = cli.read(work)
    if cli.emit_if_json(purchases):
        return
    _print_purchases(purchases)


async def _find_purchase(session: AsyncSession, org: Organization, ref: str) -> Purchase:
    """A purchase by id, or by the first characters of its id when they name only one."""
    purchases = await organization_service.list_purchases(session, org)
    try:
        wanted = uuid.UUID(ref)
        matches = [p for p in purchases if p.id == wanted]
    except ValueError:
        prefix = ref.strip().lower()
        matches = [p for p in purchases if len(prefix) >= 4 and str(p.id).startswith(prefix)]
    if len(matches) != 1:
        problem = "names several purchases" if matches else "names no purchase"
        raise NotFound(f"'{ref}' {problem} of {org.name}.", details={"purchase": ref})
    return matches[0]


@purchase_app.command("expire")
def purchase_expire(
    ctx: typer.Context,
    org: OrgOption,
    purchase: Annotated[str, typer.Argument(help="Purchase id (or its first characters).")],
    at: Annotated[
        str | None,
        typer.Option(
            "--at", metavar="WHEN", help="New expiry, date or time, in the organization's zone."
        ),
    ] = None,
    now: Annotated[bool, typer.Option("--now", help="Expire it at once.")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the expiry.")] = False,
    json_output: Json = False,
) -> None:
    """Set, move or clear a purchase's expiry; --now expires it at once."""
    cli = Cli.of(ctx, json_output)
    if sum((at is not None, now, clear)) != 1:
        cli.fail(InvalidRequest("Give exactly one of --at WHEN, --now or --clear."))

    async def work(session: AsyncSession, act: Act) -> PurchaseOut:
        locked = await lock_org(session, act, org)
        found = await _find_purchase(session, locked, purchase)
        expires_at = act.now if now else parse_moment("--at", at, locked.time_zone)
        changed = await organization_service.change_purchase_expiry(
            session, act, locked, found.id, expires_at
        )
        return PurchaseOut.of(changed)

    changed = cli.write(work)
    if cli.emit_if_json(changed):
        return
    if changed.expired:
        say(f"Purchase {changed.id} has expired; its tokens no longer count.")
    elif changed.expires_at is None:
        say(f"Purchase {changed.id} no longer expires.")
    else:
        say(f"Purchase {changed.id} expires {changed.expires_at:%Y-%m-%d %H:%M} UTC.")
