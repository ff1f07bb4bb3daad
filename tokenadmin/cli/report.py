"""`tokenadmin report usage` and `tokenadmin report forecast`: the API's usage report and
run-out forecasts, from the same service (report/service.py)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated, Literal

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.cli.common import (
    Cli,
    Json,
    OrgOption,
    find_org,
    find_user,
    now_act,
    out,
    say,
    table,
)
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest
from tokenadmin.organization import service as organization_service
from tokenadmin.report import service
from tokenadmin.report.schemas import OrgForecastOut, UsageReportOut, UserForecastOut
from tokenadmin.tokens import Kind
from tokenadmin.user.service import find_by_ref

report_app = typer.Typer(help="Usage reports and run-out forecasts.")


def _day(cli: Cli, option: str, text: str | None) -> date | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        cli.fail(InvalidRequest(f"{option}: '{text}' is not a date; write 2026-03-31."))


@report_app.command("usage")
def report_usage(
    ctx: typer.Context,
    org: OrgOption,
    granularity: Annotated[
        str, typer.Option(help="day or month: one row a day or a month.")
    ] = "day",
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="DATE",
            help="First day, in the organization's time zone (default: the first day of the"
            " month; 31 days back without periods; per month, a year back).",
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="DATE", help="Last day, included (default: today).")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", metavar="USER", help="Only this user (email or id).")
    ] = None,
    by_model: Annotated[
        bool, typer.Option("--by-model", help="One row a day (or month) and model.")
    ] = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    json_output: Json = False,
) -> None:
    """Usage per day or per month, per kind (and model), of an organization or one user."""
    cli = Cli.of(ctx, json_output)
    if granularity not in ("day", "month"):
        cli.fail(InvalidRequest("--granularity: day or month."))
    bucket: Literal["day", "month"] = "month" if granularity == "month" else "day"
    first, last = _day(cli, "--from", from_), _day(cli, "--until", until)

    async def work(session: AsyncSession) -> service.UsageReport:
        found = await find_org(session, org)
        who = await find_by_ref(session, found.id, user) if user is not None else None
        return await service.usage_report(
            session,
            found,
            now_act().now,
            granularity=bucket,
            first=first,
            last=last,
            user=who,
            by_model=by_model,
        )

    report = cli.read(work)
    if cli.emit_if_json(UsageReportOut.of(report).model_dump(mode="json", by_alias=True)):
        return
    if csv_output:
        typer.echo(report.csv(), nl=False)
        return
    columns = ("date", *(("model",) if by_model else ()), "inference", "training")
    rows = [
        (
            report.label(row.start),
            *((row.model,) if by_model else ()),
            row.tokens[Kind.inference],
            row.tokens[Kind.training],
        )
        for row in report.rows
    ]
    who = report.user.email if report.user is not None else report.org.name
    title = f"Usage of {who} per {bucket}, {report.first} to {report.last} ({report.org.time_zone})"
    out().print(table(title, columns, rows))
    totals = report.totals
    say(f"Total: {totals[Kind.inference]:,} inference, {totals[Kind.training]:,} training.")


@report_app.command("forecast")
def report_forecast(
    ctx: typer.Context,
    org: Annotated[
        str | None,
        typer.Option(
            "--org", metavar="ORG", help="The organization's forecast (id or exact name)."
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", metavar="USER", help="This user's forecast instead (email or id)."),
    ] = None,
    users: Annotated[
        int,
        typer.Option(
            min=0,
            max=service.MAX_USERS,
            help="With --org: also list this many users, who run out soonest first.",
        ),
    ] = 0,
    offset: Annotated[int, typer.Option(min=0, help="With --users: skip this many.")] = 0,
    json_output: Json = False,
) -> None:
    """When an organization (--org) or a user (--user) runs out of each kind at their pace."""
    cli = Cli.of(ctx, json_output)

    async def work(db: Database) -> OrgForecastOut | UserForecastOut:
        now = now_act().now

        async def subject(session: AsyncSession) -> tuple[uuid.UUID, str | None]:
            found = await find_org(session, org) if org is not None else None
            if user is None:
                if found is None:
                    raise InvalidRequest("Name an organization (--org) or a user (--user).")
                return found.id, None
            person = await find_user(session, user, found)
            return person.org_id, str(person.id)

        org_id, user_id = await db.read(subject)
        await organization_service.up_to_date(db, org_id, now)

        async def look(session: AsyncSession) -> OrgForecastOut | UserForecastOut:
            fresh = await organization_service.get(session, org_id)
            if user_id is None:
                whole = await service.org_forecast(session, fresh, now, users=users, offset=offset)
                return OrgForecastOut.of(whole)
            person = await find_by_ref(session, fresh.id, user_id)
            return UserForecastOut.of(await service.user_forecast(session, fresh, person, now))

        return await db.read(look)

    forecast = cli.run(work)
    if cli.emit_if_json(forecast):
        return
    who = forecast.email if isinstance(forecast, UserForecastOut) else str(org)
    ends = f"; the period ends {forecast.period_end:%Y-%m-%d}" if forecast.period_end else ""
    say(
        f"{who}: pace measured from {forecast.measured_from:%Y-%m-%d %H:%M} UTC"
        f" ({forecast.days_observed} whole days){ends}."
    )
    columns = ("kind", "remaining", "used", "pace a day", "days with usage", "runs out (UTC)")
    rows = [
        (kind, k.remaining, k.used, k.pace_per_day, k.days_with_usage, k.runs_out_on)
        for kind, k in (("inference", forecast.inference), ("training", forecast.training))
    ]
    out().print(table(None, columns, rows))
    for kind, k in (("inference", forecast.inference), ("training", forecast.training)):
        say(f"{kind.capitalize()}: {k.basis}")
    if isinstance(forecast, OrgForecastOut) and forecast.users:
        listed = [
            (u.email, u.inference.runs_out_on, u.training.runs_out_on) for u in forecast.users
        ]
        title = f"Users who run out soonest ({forecast.users_total:,} with usage)"
        out().print(table(title, ("user", "inference runs out", "training runs out"), listed))
