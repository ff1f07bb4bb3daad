"""`tokenadmin allowance ...`: Max Tokens and Max Train Tokens, of one user or a file of them.

Both commands make their change with `allowance.service.change`, as the API and the
dashboard do: every row is checked, and all rows are saved or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.allowance.service import ChangeResult
from tokenadmin.cli.common import (
    Cli,
    DryRun,
    Json,
    OrgOption,
    Reason,
    emit_json,
    find_org,
    out,
    say,
    table,
)
from tokenadmin.errors import InvalidRequest
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind
from tokenadmin.user.csv_io import CsvRow, read_amounts, read_csv, read_version

INFERENCE, TRAINING = ALLOWANCE_LABEL[Kind.inference], ALLOWANCE_LABEL[Kind.training]
allowance_app = typer.Typer(help=f"Change {INFERENCE} and {TRAINING}: all rows or none.")


def _amount_option(help_text: str) -> Any:
    return typer.Option(metavar="AMOUNT", help=help_text)


NewMaxTokens = Annotated[str | None, _amount_option(f"New {INFERENCE}, e.g. 500K.")]
NewMaxTrainTokens = Annotated[str | None, _amount_option(f"New {TRAINING}, e.g. 1M.")]
MaxTokensOrMinimum = Annotated[
    str | None, _amount_option(f"{INFERENCE} (default: the organization's minimum).")
]
MaxTrainTokensOrMinimum = Annotated[
    str | None, _amount_option(f"{TRAINING} (default: the training minimum).")
]
FILE_COLUMNS = ("user", "max_tokens", "max_train_tokens", "expected_version")
FILE_ALIASES = {"email": "user", "version": "expected_version"}


@dataclass
class Row:
    """One change, in the shape `allowance.service.change` reads (`RowLike`)."""

    user: str
    max_tokens: int | None = None
    max_train_tokens: int | None = None
    expected_version: int | None = None


async def _change(
    session: AsyncSession,
    act: Act,
    org_ref: str,
    rows: list[Row],
    *,
    dry_run: bool,
    reason: str | None,
) -> ChangeResult:
    org = await find_org(session, org_ref)
    return await allowance_service.change(
        session, act, org.id, rows, dry_run=dry_run, reason=reason, refuse=False
    )


def _report(cli: Cli, result: ChangeResult, lines: list[int] | None, *, single: bool) -> None:
    """The preview; then, when refused, the refusal with every refused row (and its line
    in the file). One user's change fails with its rule's code, as the API's user update
    does; a file of changes with the batch's code, as the API's batch endpoint does."""
    preview = result.preview()
    _with_lines(preview["refused"], lines)
    if cli.json:
        emit_json(preview)
    else:
        _print_preview(preview)
    if not result.accepted:
        cli.json = False  # the preview printed above is the answer
        error = allowance_service.refusal(result.plan, one_user=single)
        _with_lines(error.details["refused"], lines)
        cli.fail(error)
    if cli.json:
        return
    if result.dry_run:
        say("Dry run: nothing was saved.", style="yellow")
    elif not preview["changes"]:
        say("Nothing to change: every allowance already has that value.")
    else:
        users = len({c["email"] for c in preview["changes"]})
        say(f"Saved {len(preview['changes'])} changes of {users} users in one step.")


def _with_lines(refused: list[dict[str, Any]], lines: list[int] | None) -> None:
    """Name each refused row by its line in the file too."""
    for row in refused:
        if lines is not None:
            row["line"] = lines[row["index"]]


def _print_preview(preview: dict[str, Any]) -> None:
    if preview["changes"]:
        rows = [
            (c["email"], c["field"], c["before"], c["after"], c["after"] - c["before"])
            for c in preview["changes"]
        ]
        columns = ("email", "field", "before", "after", "change")
        out().print(table("Changes", columns, rows))
    print_balance_after(preview["balance_after"])


def print_balance_after(balance_after: dict[str, dict[str, int]]) -> None:
    """Per kind, the capacity, allocated and balance a change leaves (or would leave)."""
    rows = [
        (kind, a["capacity"], a["allocated"], a["balance"]) for kind, a in balance_after.items()
    ]
    out().print(table("Balance after", ("kind", "capacity", "allocated", "balance"), rows))


@allowance_app.command("set")
def allowance_set(
    ctx: typer.Context,
    org: OrgOption,
    user: Annotated[str, typer.Option("--user", metavar="USER", help="The user's email or id.")],
    max_tokens: NewMaxTokens = None,
    max_train_tokens: NewMaxTrainTokens = None,
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
    result = cli.write(
        lambda session, act: _change(session, act, org, [row], dry_run=dry_run, reason=reason)
    )
    _report(cli, result, None, single=True)


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
    amounts = read_amounts(values, problem)
    row.max_tokens, row.max_train_tokens = amounts.get(Kind.inference), amounts.get(Kind.training)
    if row.max_tokens is None and row.max_train_tokens is None and row.user:
        problem("no_change", "The row has neither max_tokens nor max_train_tokens.")
    row.expected_version = read_version(values.get("expected_version", ""), problem)
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
    result = cli.write(
        lambda session, act: _change(session, act, org, rows, dry_run=dry_run, reason=reason)
    )
    _report(cli, result, lines, single=False)
