"""`tokenadmin allowance ...`: Max Tokens and Max Train Tokens, of one user or a file of them.

Both commands go through `allowance.service.resolve`, `plan` and `apply`, as the API's
batch endpoint does: every row is checked, and all rows are saved or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.amounts import parse_amount
from tokenadmin.cli.common import Cli, emit_json, lock_org, out, say, table
from tokenadmin.errors import AllowanceChangeRefused, InvalidRequest, TokenAdminError
from tokenadmin.tokens import ALLOWANCE_FIELD
from tokenadmin.user.csv_io import CsvRow, read_csv

allowance_app = typer.Typer(help="Change Max Tokens and Max Train Tokens: all rows or none.")

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
OrgOption = Annotated[
    str, typer.Option("--org", metavar="ORG", help="Organization id or exact name.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Preview only; save nothing.")]
Reason = Annotated[str | None, typer.Option(help="Why, for the journal.")]
FILE_COLUMNS = ("user", "max_tokens", "max_train_tokens", "expected_version")
FILE_ALIASES = {"email": "user", "version": "expected_version"}


@dataclass
class Row:
    """One change, in the shape `allowance.service.resolve` reads."""

    user: str
    max_tokens: int | None = None
    max_train_tokens: int | None = None
    expected_version: int | None = None


@dataclass
class Outcome:
    preview: dict[str, Any]
    applied: bool


async def _change(
    session: AsyncSession,
    act: Act,
    org_ref: str,
    rows: list[Row],
    lines: list[int] | None,
    *,
    dry_run: bool,
    reason: str | None,
) -> Outcome:
    org = await lock_org(session, act, org_ref)
    try:
        requests = await allowance_service.resolve(session, org, rows)
    except AllowanceChangeRefused as error:
        raise _with_lines(error, lines) from None
    plan = allowance_service.plan(org, requests, act)
    preview = allowance_service.preview(plan)
    if lines is not None:
        for refusal in preview["refused"]:
            refusal["line"] = lines[refusal["index"]]
    if dry_run or not plan.accepted:
        return Outcome(preview, applied=False)
    await allowance_service.apply(session, act, org, plan, reason=reason)
    return Outcome(preview, applied=True)


def _with_lines(error: TokenAdminError, lines: list[int] | None) -> TokenAdminError:
    if lines is not None:
        for row in error.details.get("refused", []):
            row["line"] = lines[row["index"]]
    return error


def _report(cli: Cli, outcome: Outcome, *, dry_run: bool, single: bool) -> None:
    preview = outcome.preview
    if cli.json:
        emit_json({"applied": outcome.applied, "dry_run": dry_run, **preview})
    else:
        _print_preview(preview)
    if preview["refused"]:
        cli.json = False  # the preview printed above is the answer
        refused = preview["refused"]
        more = f" (and {len(refused) - 1} more refused rows)" if len(refused) > 1 else ""
        start = "Would refuse" if dry_run else "Nothing was saved"
        # One user's change fails with its rule's code, as the API's user update does; a
        # file of changes with the batch's code, as the API's batch endpoint does.
        code = refused[0]["code"] if single else AllowanceChangeRefused.code
        cli.fail(AllowanceChangeRefused(f"{start}: {refused[0]['message']}{more}", code=code))
    if cli.json:
        return
    if dry_run:
        say("Dry run: nothing was saved.", style="yellow")
    elif not preview["changes"]:
        say("Nothing to change: every allowance already has that value.")
    else:
        users = len({c["email"] for c in preview["changes"]})
        say(f"Saved {len(preview['changes'])} changes of {users} users in one step.")


def _print_preview(preview: dict[str, Any]) -> None:
    if preview["changes"]:
        rows = [
            (c["email"], c["field"], c["before"], c["after"], c["after"] - c["before"])
            for c in preview["changes"]
        ]
        columns = ("email", "field", "before", "after", "change")
        out().print(table("Changes", columns, rows))
    if preview["refused"]:
        refused = [
            (str(r.get("line", r["index"])), r["email"], r["code"], r["message"])
            for r in preview["refused"]
        ]
        where = "line" if "line" in preview["refused"][0] else "row"
        out().print(table("Refused", (where, "email", "code", "why"), refused))
    after = [
        (kind, a["capacity"], a["allocated"], a["balance"])
        for kind, a in preview["balance_after"].items()
    ]
    out().print(table("Balance after", ("kind", "capacity", "allocated", "balance"), after))


@allowance_app.command("set")
def allowance_set(
    ctx: typer.Context,
    org: OrgOption,
    user: Annotated[str, typer.Option("--user", metavar="USER", help="The user's email or id.")],
    max_tokens: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help="New Max Tokens, e.g. 500K.")
    ] = None,
    max_train_tokens: Annotated[
        str | None, typer.Option(metavar="AMOUNT", help="New Max Train Tokens, e.g. 1M.")
    ] = None,
    expected_version: Annotated[
        int | None, typer.Option(help="Refuse if the user changed since this version.")
    ] = None,
    reason: Reason = None,
    dry_run: DryRun = False,
    json_output: Json = False,
) -> None:
    """Set one user's Max Tokens and/or Max Train Tokens (preview with --dry-run)."""
    cli = Cli.of(ctx, json_output)
    row = Row(
        user=user,
        max_tokens=cli.amount("--max-tokens", max_tokens),
        max_train_tokens=cli.amount("--max-train-tokens", max_train_tokens),
        expected_version=expected_version,
    )
    if row.max_tokens is None and row.max_train_tokens is None:
        cli.fail(InvalidRequest("Give --max-tokens, --max-train-tokens or both."))
    outcome = cli.write(
        lambda session, act: _change(session, act, org, [row], None, dry_run=dry_run, reason=reason)
    )
    _report(cli, outcome, dry_run=dry_run, single=True)


def _file_rows(cli: Cli, path: Path) -> tuple[list[Row], list[int]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        cli.fail(InvalidRequest(f"Can't read {path}: {error}."))
    try:
        raw = read_csv(text, columns=FILE_COLUMNS, required=("user",), aliases=FILE_ALIASES)
    except InvalidRequest as error:
        cli.fail(error)
    rows: list[Row] = []
    problems: list[dict[str, Any]] = []
    for csv_row in raw:
        row = _parse(csv_row, problems)
        if row is not None:
            rows.append(row)
    if problems:
        cli.fail(
            InvalidRequest(
                f"Nothing was saved: {len(problems)} rows of {path} can't be read.",
                code="invalid_csv",
                details={"refused": problems},
            )
        )
    if not rows:
        cli.fail(InvalidRequest(f"{path} has no rows."))
    return rows, [r.line for r in raw]


def _parse(csv_row: CsvRow, problems: list[dict[str, Any]]) -> Row | None:
    values = {k: v.strip() for k, v in csv_row.values.items()}
    found = len(problems)

    def problem(code: str, message: str) -> None:
        problems.append(
            {
                "line": csv_row.line,
                "email": values.get("user", ""),
                "code": code,
                "message": message,
            }
        )

    row = Row(user=values.get("user", ""))
    if not row.user:
        problem("user_required", "The user column is empty.")
    if "" in values:
        problem("extra_cells", f"The row has more cells than the header: '{values['']}'.")
    for field in ALLOWANCE_FIELD.values():
        if values.get(field):
            try:
                setattr(row, field, parse_amount(values[field]))
            except ValueError as error:
                problem("invalid_amount", f"{field}: {error}")
    if row.max_tokens is None and row.max_train_tokens is None and row.user:
        problem("no_change", "The row has neither max_tokens nor max_train_tokens.")
    version = values.get("expected_version", "")
    if version:
        if version.isascii() and version.isdigit():
            row.expected_version = int(version)
        else:
            problem("invalid_version", f"The version '{version}' is not a whole number.")
    return row if len(problems) == found else None


@allowance_app.command("apply")
def allowance_apply(
    ctx: typer.Context,
    org: OrgOption,
    file: Annotated[
        Path, typer.Argument(help="CSV: user,max_tokens,max_train_tokens[,expected_version].")
    ],
    reason: Reason = None,
    dry_run: DryRun = False,
    json_output: Json = False,
) -> None:
    """Change many users' allowances from a CSV file in one atomic step."""
    cli = Cli.of(ctx, json_output)
    rows, lines = _file_rows(cli, file)
    outcome = cli.write(
        lambda session, act: _change(session, act, org, rows, lines, dry_run=dry_run, reason=reason)
    )
    _report(cli, outcome, dry_run=dry_run, single=False)
