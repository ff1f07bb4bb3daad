"""`tokenadmin batches` and `tokenadmin revert`: the saved allowance changes of an
organization, and undoing one, through `allowance.revert` as the API and the dashboard do:
a preview, or one atomic change of every row that can still be reverted."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import revert as revert_service
from tokenadmin.allowance.schemas import BatchOut, RevertPreview
from tokenadmin.cli.allowances import print_balance_after
from tokenadmin.cli.common import Cli, DryRun, Json, OrgOption, find_org, out, say, table
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind


def _who(actor: str) -> str:
    return actor.split(":", 1)[1] if ":" in actor else actor


def batches(
    ctx: typer.Context,
    org: OrgOption,
    before: Annotated[
        str | None,
        typer.Option(metavar="BATCH", help="Batches older than this one (the last listed)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many batches.")] = 20,
    json_output: Json = False,
) -> None:
    """List the saved allowance changes (batches), newest first, and whether each was
    reverted."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> list[BatchOut]:
        found = await revert_service.batches(
            session, await find_org(session, org), before=before, limit=limit
        )
        return [BatchOut(**batch.out()) for batch in found]

    listed = cli.read(work)
    if cli.emit_if_json(listed):
        return
    rows = [
        (
            b.id,
            b.at.strftime("%Y-%m-%d %H:%M UTC"),
            _who(b.actor),
            b.rows,
            b.delta["inference"],
            b.delta["training"],
            f"reverted by {b.reverted_by}" if b.reverted else "",
            b.reason or "",
        )
        for b in listed
    ]
    columns = ("batch", "when", "by", "changes", "Max Tokens", "Max Train Tokens", "", "reason")
    out().print(table("Saved changes", columns, rows))
    if not listed:
        say("No allowance was saved yet.")


def revert(
    ctx: typer.Context,
    batch: Annotated[str, typer.Argument(metavar="BATCH", help="The saved change's id.")],
    org: OrgOption,
    dry_run: DryRun = False,
    token: Annotated[
        str | None,
        typer.Option(
            metavar="TOKEN", help="Revert only if nothing changed since the preview of this token."
        ),
    ] = None,
    json_output: Json = False,
) -> None:
    """Revert a saved allowance change: every row that can still be reverted, in one step;
    each other row says why it can't be (preview with --dry-run)."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> RevertPreview:
        found = await find_org(session, org)
        plan = await revert_service.revert(
            session, act, found.id, batch.strip(), dry_run=dry_run, preview_token=token
        )
        return RevertPreview(**plan.out())

    answer = cli.write(work)
    if cli.emit_if_json(answer):
        return
    _print(answer)
    if answer.applied:
        say(f"Reverted {answer.revertable:,} changes in one step.", style="green")
    else:
        say(
            "Preview: nothing was changed. Revert it with"
            f" `tokenadmin revert {answer.batch.id} --org {org} --token {answer.preview_token}`"
        )


def _print(answer: RevertPreview) -> None:
    rows: list[tuple[Any, ...]] = [
        (
            r.email,
            ALLOWANCE_LABEL[Kind(r.kind)],
            r.now,
            r.back_to,
            "yes" if r.revertable else "no: " + " ".join(str(x["message"]) for x in r.reasons),
        )
        for r in answer.rows
    ]
    title = (
        f"Revert of the save of {answer.batch.at:%Y-%m-%d %H:%M} UTC by {_who(answer.batch.actor)}"
    )
    out().print(table(title, ("user", "allowance", "now", "back to", "reverted"), rows))
    if answer.balance_after:
        print_balance_after({k: v.model_dump() for k, v in answer.balance_after.items()})
