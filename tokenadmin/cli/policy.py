"""`tokenadmin policy ...` and `tokenadmin boost ...`: an organization's allocation policy
(show, set, preview, run, log) and temporary boosts (add, list, end), through
policy.service as the API and the dashboard do."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.cli.common import (
    Cli,
    DryRun,
    Json,
    OrgOption,
    find_org,
    lock_org,
    out,
    parse_moment,
    say,
    table,
)
from tokenadmin.errors import InvalidRequest
from tokenadmin.policy import service
from tokenadmin.policy.schemas import BoostOut, BoostPage, KindPolicyOut, LogEntryOut, LogPage
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind

policy_app = typer.Typer(
    help="The allocation policy: floor, ceiling, auto-increase and reclamation per kind;"
    " show, set (a preset or custom numbers), preview, run, log."
)
boost_app = typer.Typer(help="Temporary boosts: an allowance raise until a date; add, list, end.")

RULE_WORDS = {
    "increase": "auto-increase",
    "reclaim": "reclaimed",
    "boost": "boost",
    "boost_end": "boost ended",
}


class Preset(StrEnum):
    conservative = "conservative"
    standard = "standard"
    aggressive = "aggressive"
    custom = "custom"


class BoostState(StrEnum):
    active = "active"
    ended = "ended"
    any = "any"


KindOption = Annotated[
    Kind, typer.Option("--kind", help="inference (Max Tokens) or training (Max Train Tokens).")
]


def _policies_json(policies: dict[Kind, service.KindPolicy]) -> dict[str, Any]:
    return {k.value: KindPolicyOut(**p.out()).model_dump(mode="json") for k, p in policies.items()}


def _print_policies(policies: dict[Kind, service.KindPolicy]) -> None:
    rows = []
    for kind, p in policies.items():
        bump = f"{p.bump_percent} %" if p.bump_percent is not None else f"{p.bump_amount:,}"
        rows.append(
            (
                ALLOWANCE_LABEL[kind],
                "on" if p.enabled else "off",
                p.preset,
                p.floor,
                p.ceiling,
                f"+{bump} at {p.trigger_percent} % every {p.cooldown_hours} h"
                if p.increase_enabled
                else "off",
                f"after {p.idle_days} idle days, every {p.reclaim_every_hours} h"
                if p.reclaim_enabled
                else "off",
            )
        )
    columns = ("kind", "policy", "preset", "floor", "ceiling", "auto-increase", "reclamation")
    out().print(table("Allocation policy", columns, rows))


def _print_run(result: service.Run, title: str) -> None:
    rows = [
        (m.user.email, ALLOWANCE_LABEL[m.kind], RULE_WORDS[m.rule], m.before, m.after, m.why)
        for m in result.moves
    ]
    columns = ("user", "allowance", "rule", "from", "to", "why")
    out().print(table(title, columns, rows))
    for s in result.skipped:
        say(f"left as is: {s.user.email} ({ALLOWANCE_LABEL[s.kind]}, {s.code}): {s.why}")
    if not result.moves:
        say("No allowance would change now." if result.dry_run else "No allowance changed.")


@policy_app.command("show")
def show(ctx: typer.Context, org: OrgOption, json_output: Json = False) -> None:
    """Show the policy of both kinds (off, with the standard numbers, until set)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> dict[Kind, service.KindPolicy]:
        return await service.current(session, await find_org(session, org))

    policies = cli.read(work)
    if not cli.emit_if_json(_policies_json(policies)):
        _print_policies(policies)


@policy_app.command("set")
def set_policy(
    ctx: typer.Context,
    org: OrgOption,
    kind: KindOption,
    preset: Annotated[
        Preset | None, typer.Option(help="Fill in every number from a preset (or custom).")
    ] = None,
    enabled: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Turn the policy on or off.")
    ] = None,
    floor: Annotated[
        str | None, typer.Option(metavar="TOKENS", help="The lowest allowance reclaimed to.")
    ] = None,
    ceiling: Annotated[
        str | None, typer.Option(metavar="TOKENS", help="The highest allowance raised to.")
    ] = None,
    increase: Annotated[
        bool | None, typer.Option("--increase/--no-increase", help="Auto-increase on or off.")
    ] = None,
    trigger: Annotated[
        int | None, typer.Option(metavar="PERCENT", help="Raise at this % used (1 to 100).")
    ] = None,
    bump: Annotated[
        str | None,
        typer.Option(metavar="BUMP", help="Raise by a percent (25%) or an amount (100K)."),
    ] = None,
    cooldown_hours: Annotated[
        int | None, typer.Option(metavar="HOURS", help="At most one raise per user per HOURS.")
    ] = None,
    reclaim: Annotated[
        bool | None, typer.Option("--reclaim/--no-reclaim", help="Reclamation on or off.")
    ] = None,
    idle_days: Annotated[
        int | None, typer.Option(metavar="DAYS", help="Reclaim from users idle this long.")
    ] = None,
    reclaim_every_hours: Annotated[
        int | None, typer.Option(metavar="HOURS", help="Reclaim once per HOURS (the job).")
    ] = None,
    dry_run: DryRun = False,
    json_output: Json = False,
) -> None:
    """Set one kind's policy: a preset fills in every number; numbers given apply over it.
    Prints what it would do now."""
    cli = Cli.of(ctx, json_output)
    changes: dict[str, Any] = {
        "preset": preset.value if preset is not None else None,
        "enabled": enabled,
        "floor": cli.amount("--floor", floor),
        "ceiling": cli.amount("--ceiling", ceiling, positive=True),
        "increase_enabled": increase,
        "trigger_percent": trigger,
        "cooldown_hours": cooldown_hours,
        "reclaim_enabled": reclaim,
        "idle_days": idle_days,
        "reclaim_every_hours": reclaim_every_hours,
    }
    if bump is not None:
        text = bump.strip()
        if text.endswith("%"):
            number = text.removesuffix("%").strip()
            if not (number.isascii() and number.isdigit()):
                cli.fail(
                    InvalidRequest(
                        f"--bump: '{bump}' is not a whole percent such as 25%.",
                        code="invalid_percent",
                        details={"option": "--bump"},
                    )
                )
            changes["bump_percent"] = int(number)
        else:
            changes["bump_amount"] = cli.amount("--bump", text, positive=True)
    given = {name: value for name, value in changes.items() if value is not None}

    async def work(session: AsyncSession, act: Act) -> service.PolicyUpdate:
        found = await lock_org(session, act, org)
        return await service.update(session, act, found, {kind: given}, dry_run=dry_run)

    result = cli.write(work)
    if cli.emit_if_json(
        {
            "applied": result.applied,
            "policy": _policies_json(result.policies),
            "preview": result.preview.out(),
        }
    ):
        return
    _print_policies(result.policies)
    _print_run(result.preview, "What it would do now")
    say("Saved." if result.applied else "Preview: nothing was saved.", style="green")


@policy_app.command("preview")
def preview(ctx: typer.Context, org: OrgOption, json_output: Json = False) -> None:
    """What the saved policy would do if run now: each move and why."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> service.Run:
        return await service.run(session, act, await lock_org(session, act, org), dry_run=True)

    result = cli.write(work)
    if not cli.emit_if_json(result.out()):
        _print_run(result, "What the policy would do now")


@policy_app.command("run")
def run(
    ctx: typer.Context, org: OrgOption, dry_run: DryRun = False, json_output: Json = False
) -> None:
    """Run the policy now (reclamation included, whatever its schedule), in one change."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> service.Run:
        return await service.run(session, act, await lock_org(session, act, org), dry_run=dry_run)

    result = cli.write(work)
    if cli.emit_if_json(result.out()):
        return
    _print_run(result, "What the policy would do now" if dry_run else "What the policy did")
    if result.applied:
        say(f"Changed {len(result.moves):,} allowances.", style="green")


@policy_app.command("log")
def log(
    ctx: typer.Context,
    org: OrgOption,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many moves.")] = 50,
    json_output: Json = False,
) -> None:
    """What the policy did, newest first."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> LogPage:
        rows, total = await service.log(session, await find_org(session, org), limit=limit)
        moves = [LogEntryOut.of(m, u) for m, u in rows]
        return LogPage(moves=moves, total=total, limit=limit, offset=0)

    page = cli.read(work)
    if cli.emit_if_json(page):
        return
    rows = [
        (
            m.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            m.email,
            ALLOWANCE_LABEL[m.kind],
            RULE_WORDS[m.rule],
            m.before,
            m.after,
            m.why,
        )
        for m in page.moves
    ]
    columns = ("when", "user", "allowance", "rule", "from", "to", "why")
    out().print(table("What the policy did", columns, rows))
    if not page.moves:
        say("The policy has not moved any tokens yet.")


@boost_app.command("add")
def boost_add(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(metavar="USER", help="Email or id.")],
    org: OrgOption,
    kind: KindOption,
    amount: Annotated[str, typer.Option(metavar="TOKENS", help="Tokens added until the end.")],
    until: Annotated[
        str, typer.Option(metavar="WHEN", help="When it ends: 2026-12-31 or 2026-12-31T18:00.")
    ],
    reason: Annotated[str | None, typer.Option(help="Why, for the journal.")] = None,
    json_output: Json = False,
) -> None:
    """Raise a user's allowance of one kind until a date; taken back by itself then."""
    cli = Cli.of(ctx, json_output)
    tokens = cli.amount("--amount", amount, positive=True)
    assert tokens is not None

    async def work(session: AsyncSession, act: Act) -> BoostOut:
        found = await lock_org(session, act, org)
        ends_at = parse_moment("--until", until, found.time_zone)
        assert ends_at is not None
        result = await service.add_boost(
            session,
            act,
            found,
            user_ref=user,
            kind=kind,
            amount=tokens,
            ends_at=ends_at,
            reason=reason,
        )
        return BoostOut.of(result.boost, result.user)

    boost = cli.write(work)
    if not cli.emit_if_json(boost):
        say(
            f"Boost {boost.id}: {boost.email}'s {ALLOWANCE_LABEL[boost.kind]} raised by"
            f" {boost.amount:,} until {boost.ends_at:%Y-%m-%d %H:%M} UTC.",
            style="green",
        )


@boost_app.command("list")
def boost_list(
    ctx: typer.Context,
    org: OrgOption,
    state: Annotated[BoostState, typer.Option(help="active, ended or any.")] = BoostState.active,
    json_output: Json = False,
) -> None:
    """List boosts, active ones first by their end."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> BoostPage:
        found = await find_org(session, org)
        chosen = None if state is BoostState.any else state.value
        rows, total = await service.boosts(session, found, state=chosen, limit=500)
        return BoostPage(
            boosts=[BoostOut.of(b, u) for b, u in rows], total=total, limit=500, offset=0
        )

    page = cli.read(work)
    if cli.emit_if_json(page):
        return
    rows = [
        (
            b.id,
            b.email,
            ALLOWANCE_LABEL[b.kind],
            b.amount,
            f"{b.ends_at:%Y-%m-%d %H:%M} UTC",
            b.state if b.taken_back is None else f"ended, {b.taken_back:,} taken back",
            b.reason or "",
        )
        for b in page.boosts
    ]
    columns = ("boost", "user", "allowance", "tokens", "ends", "state", "reason")
    out().print(table("Boosts", columns, rows))
    if not page.boosts:
        say("No boost.")


@boost_app.command("end")
def boost_end(
    ctx: typer.Context,
    boost_id: Annotated[str, typer.Argument(metavar="BOOST_ID", help="The boost's id.")],
    org: OrgOption,
    json_output: Json = False,
) -> None:
    """End a boost now: taken back (never below what the user used)."""
    cli = Cli.of(ctx, json_output)
    wanted = cli.id_of(boost_id, "boost", code="boost_not_found")

    async def work(session: AsyncSession, act: Act) -> BoostOut:
        result = await service.end_boost(session, act, await lock_org(session, act, org), wanted)
        return BoostOut.of(result.boost, result.user)

    boost = cli.write(work)
    if not cli.emit_if_json(boost):
        say(f"Boost ended: {boost.taken_back or 0:,} tokens taken back.", style="green")
