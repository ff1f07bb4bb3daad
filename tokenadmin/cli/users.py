"""`tokenadmin user ...` (one user) and `tokenadmin users ...` (the table as CSV)."""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Annotated, TextIO

import typer
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin import bulk
from tokenadmin.act import Act
from tokenadmin.allowance.service import allowances_of
from tokenadmin.auth.passwords import MIN_PASSWORD_LENGTH
from tokenadmin.cli.allowances import (
    INFERENCE,
    TRAINING,
    MaxTokensOrMinimum,
    MaxTrainTokensOrMinimum,
    NewMaxTokens,
    NewMaxTrainTokens,
    print_balance_after,
)
from tokenadmin.cli.common import (
    Cli,
    Json,
    OrgOption,
    PasswordStdin,
    Reason,
    emit_json,
    find_org,
    lock_org,
    lock_user,
    note,
    now_act,
    out,
    progress_bar,
    say,
    table,
)
from tokenadmin.cli.common import find_user as find_user_in
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest
from tokenadmin.organization.service import current_period
from tokenadmin.tokens import Kind
from tokenadmin.user import csv_io
from tokenadmin.user import service as user_service
from tokenadmin.user.csv_io import CsvRow, count_users, export_chunks
from tokenadmin.user.csv_schemas import ImportResult
from tokenadmin.user.schemas import Role, SortField, Status, UserListQuery, UserOut, UserPage

user_app = typer.Typer(help="One user: create, show, change, deactivate, reactivate.")
users_app = typer.Typer(
    help="The user table: CSV export and import (atomic); many test users at once (seed)."
)

UserArgument = Annotated[str, typer.Argument(help="The user's email or id.")]
InOrg = Annotated[
    str | None,
    typer.Option("--org", metavar="ORG", help="Only look in this organization (id or name)."),
]
RoleOption = Annotated[Role | None, typer.Option(help="admin or member.")]
PREVIEW_ROWS = 50


def _allowances(cli: Cli, max_tokens: str | None, max_train: str | None) -> dict[Kind, int]:
    return allowances_of(
        cli.amount("--max-tokens", max_tokens), cli.amount("--max-train-tokens", max_train)
    )


def read_password(cli: Cli, from_stdin: bool, *, prompt: bool) -> str | None:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif prompt:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    else:
        return None
    if len(password) < MIN_PASSWORD_LENGTH:
        cli.fail(
            InvalidRequest(
                f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.", code="weak_password"
            )
        )
    return password


def _print_user(user: UserOut) -> None:
    rows = [
        ("id", str(user.id)),
        ("email", user.email),
        ("name", user.name),
        ("role", user.role),
        ("status", user.status),
        ("version", user.version),
        ("last activity", user.last_activity_at),
    ]
    out().print(table(None, ("field", "value"), rows))
    usage = [
        (label, allowance, kind.used, kind.reserved, kind.remaining)
        for label, allowance, kind in (
            (f"{INFERENCE} (inference)", user.max_tokens, user.inference),
            (f"{TRAINING} (training)", user.max_train_tokens, user.training),
        )
    ]
    out().print(table(None, ("allowance", "max", "used", "reserved", "remaining"), usage))


def _user_out(cli: Cli, user: UserOut, message: str) -> None:
    if cli.json:
        emit_json(user)
    else:
        say(message)


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    org: OrgOption,
    email: Annotated[str, typer.Option(help="Email address (also the login).")],
    name: Annotated[str, typer.Option(help="Full name.")],
    role: Annotated[Role, typer.Option(help="admin or member.")] = "member",
    max_tokens: MaxTokensOrMinimum = None,
    max_train_tokens: MaxTrainTokensOrMinimum = None,
    password_stdin: PasswordStdin = False,
    json_output: Json = False,
) -> None:
    """Add a user; their allowances come from the organization's balance."""
    cli = Cli.of(ctx, json_output)
    address, full_name = cli.email(email), cli.name(name)
    allowances = _allowances(cli, max_tokens, max_train_tokens)
    spec = user_service.NewUser(
        email=address,
        name=full_name,
        role=role,
        max_tokens=allowances.get(Kind.inference),
        max_train_tokens=allowances.get(Kind.training),
        password=read_password(cli, password_stdin, prompt=False),
    )

    async def work(session: AsyncSession, act: Act) -> UserOut:
        locked = await lock_org(session, act, org)
        user = await user_service.create(session, act, locked, spec)
        return UserOut.of(user, current_period(locked, act.now))

    user = cli.write(work)
    _user_out(
        cli,
        user,
        f"Created {user.email} ({user.id}) with {user.max_tokens:,} {INFERENCE}"
        f" and {user.max_train_tokens:,} {TRAINING}.",
    )


@user_app.command("list")
def user_list(
    ctx: typer.Context,
    org: OrgOption,
    search: Annotated[str | None, typer.Option(help="Part of a name or email.")] = None,
    status: Annotated[Status | None, typer.Option(help="active or deactivated.")] = None,
    role: RoleOption = None,
    sort: Annotated[SortField, typer.Option(help="Column to sort by.")] = "name",
    desc: Annotated[bool, typer.Option("--desc", help="Sort descending.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Users per page.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Users to skip.")] = 0,
    json_output: Json = False,
) -> None:
    """Search, filter, sort and page through an organization's users."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> UserPage:
        found = await find_org(session, org)
        query = UserListQuery(
            search=search,
            status=status,
            role=role,
            sort=sort,
            order="desc" if desc else "asc",
            limit=limit,
            offset=offset,
        )
        return await user_service.search(session, found, now_act().now, query)

    page = cli.read(work)
    if cli.json:
        emit_json(page)
        return
    rows = [
        (
            u.email,
            u.name,
            u.role,
            u.status,
            u.max_tokens,
            u.inference.used,
            u.max_train_tokens,
            u.training.used,
            u.last_activity_at,
        )
        for u in page.users
    ]
    columns = (
        "email",
        "name",
        "role",
        "status",
        INFERENCE,
        "used",
        TRAINING,
        "used",
        "last activity",
    )
    out().print(table(None, columns, rows))
    shown_to = page.offset + len(page.users)
    say(f"{page.offset + 1 if page.users else 0}–{shown_to} of {page.total:,} users.")


@user_app.command("show")
def user_show(
    ctx: typer.Context, user: UserArgument, org: InOrg = None, json_output: Json = False
) -> None:
    """Show a user: allowances, this period's usage, what remains."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession) -> UserOut:
        organization = await find_org(session, org) if org is not None else None
        found = await find_user_in(session, user, organization)
        owner = await find_org(session, str(found.org_id))
        return UserOut.of(found, current_period(owner, now_act().now))

    shown = cli.read(work)
    if cli.json:
        emit_json(shown)
        return
    _print_user(shown)


@user_app.command("update")
def user_update(
    ctx: typer.Context,
    user: UserArgument,
    org: InOrg = None,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    role: RoleOption = None,
    max_tokens: NewMaxTokens = None,
    max_train_tokens: NewMaxTrainTokens = None,
    expected_version: Annotated[
        int | None,
        typer.Option(help="The version you saw; refused if someone changed the user since."),
    ] = None,
    reason: Reason = None,
    json_output: Json = False,
) -> None:
    """Change a user's name, role, Max Tokens and Max Train Tokens in one atomic step."""
    cli = Cli.of(ctx, json_output)
    allowances = _allowances(cli, max_tokens, max_train_tokens)
    if name is None and role is None and not allowances:
        cli.fail(InvalidRequest("Nothing to change: give at least one option."))
    new_name = cli.name(name) if name is not None else None

    async def work(session: AsyncSession, act: Act) -> UserOut:
        found, locked = await lock_user(session, act, user, org)
        await user_service.update(
            session,
            act,
            locked,
            found,
            name=new_name,
            role=role,
            allowances=allowances,
            expected_version=expected_version,
            reason=reason,
        )
        return UserOut.of(found, current_period(locked, act.now))

    updated = cli.write(work)
    _user_out(
        cli,
        updated,
        f"Updated {updated.email}: {INFERENCE} {updated.max_tokens:,}, {TRAINING}"
        f" {updated.max_train_tokens:,} (version {updated.version}).",
    )


@user_app.command("deactivate")
def user_deactivate(
    ctx: typer.Context, user: UserArgument, org: InOrg = None, json_output: Json = False
) -> None:
    """Deactivate a user: usage stops, reservations are released, unused tokens return."""
    cli = Cli.of(ctx, json_output)

    async def work(session: AsyncSession, act: Act) -> UserOut:
        found, locked = await lock_user(session, act, user, org)
        await user_service.deactivate(session, act, locked, found)
        return UserOut.of(found, current_period(locked, act.now))

    done = cli.write(work)
    _user_out(
        cli, done, f"Deactivated {done.email}; their unused allowance is back in the balance."
    )


@user_app.command("reactivate")
def user_reactivate(
    ctx: typer.Context,
    user: UserArgument,
    org: InOrg = None,
    max_tokens: MaxTokensOrMinimum = None,
    max_train_tokens: MaxTrainTokensOrMinimum = None,
    json_output: Json = False,
) -> None:
    """Reactivate a user with at least the organization's minimums, from the balance."""
    cli = Cli.of(ctx, json_output)
    allowances = _allowances(cli, max_tokens, max_train_tokens)

    async def work(session: AsyncSession, act: Act) -> UserOut:
        found, locked = await lock_user(session, act, user, org)
        await user_service.reactivate(session, act, locked, found, allowances)
        return UserOut.of(found, current_period(locked, act.now))

    done = cli.write(work)
    _user_out(
        cli,
        done,
        f"Reactivated {done.email} with {done.max_tokens:,} {INFERENCE}"
        f" and {done.max_train_tokens:,} {TRAINING}.",
    )


@user_app.command("set-password")
def user_set_password(
    ctx: typer.Context,
    user: UserArgument,
    org: InOrg = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a user's dashboard password (prompted, hidden; or --password-stdin)."""
    cli = Cli.of(ctx)
    password = read_password(cli, password_stdin, prompt=True)
    assert password is not None

    async def work(session: AsyncSession, act: Act) -> str:
        found, _ = await lock_user(session, act, user, org)
        await user_service.set_password(session, act, found, password)
        return found.email

    email = cli.write(work)
    say(f"Password set for {email}.")


# --- the table as CSV ---------------------------------------------------------------------


@users_app.command("export")
def users_export(
    ctx: typer.Context,
    org: OrgOption,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (default: standard output)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary (needs --output).")
    ] = False,
) -> None:
    """Export an organization's users with allowances and this period's usage as CSV."""
    cli = Cli.of(ctx, json_output)
    if json_output and output is None:
        cli.fail(InvalidRequest("--json prints a summary, so the CSV needs --output FILE."))

    async def work(db: Database) -> tuple[str, int]:
        async def export(session: AsyncSession) -> tuple[str, int]:
            act = now_act()
            found = await find_org(session, org)
            total = await count_users(session, found)
            stream: TextIO
            with progress_bar() as progress, _open(output) as stream:
                task = progress.add_task(f"Exporting {found.name}", total=total)
                chunks = export_chunks(
                    session, found, act.now, progress=lambda n: progress.advance(task, n)
                )
                async for chunk in chunks:
                    stream.write(chunk)
            return found.name, total

        return await db.read(export)

    name, total = cli.run(work)
    if cli.json:
        emit_json({"organization": name, "users": total, "output": str(output)})
    elif output is not None:
        say(f"Exported {total:,} users of {name} to {output}.")


def _open(path: Path | None) -> AbstractContextManager[TextIO]:
    if path is None:
        return nullcontext(sys.stdout)
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as error:
        raise InvalidRequest(f"Can't write {path}: {error.strerror}.") from error


def _read_file(cli: Cli, path: Path) -> list[CsvRow]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        cli.fail(InvalidRequest(f"No file {path}."))
    except UnicodeDecodeError:
        cli.fail(InvalidRequest(f"{path} is not UTF-8 text.", code="invalid_csv"))
    except OSError as error:
        cli.fail(InvalidRequest(f"Can't read {path}: {error.strerror}."))
    try:
        return csv_io.read_upload(text)
    except InvalidRequest as error:
        cli.fail(error)


def print_import(result: ImportResult) -> None:
    """The preview of an import: new users, changes, the balance after (refused rows are
    listed with the refusal, on stderr)."""
    if result.new_users:
        new_rows = [
            (str(n.line), n.email, n.name, n.role, n.max_tokens, n.max_train_tokens)
            for n in result.new_users[:PREVIEW_ROWS]
        ]
        columns = ("line", "email", "name", "role", INFERENCE, TRAINING)
        out().print(table(f"New users ({len(result.new_users):,})", columns, new_rows))
        _more(len(result.new_users))
    if result.changes:
        changes = [
            (str(c.line), c.email, c.field, c.before, c.after)
            for c in result.changes[:PREVIEW_ROWS]
        ]
        title = f"Changes ({len(result.changes):,} in {result.changed_users:,} users)"
        out().print(table(title, ("line", "email", "field", "before", "after"), changes))
        _more(len(result.changes))
    print_balance_after(result.model_dump()["balance_after"])
    say(
        f"{result.rows:,} rows: {len(result.new_users):,} new users,"
        f" {result.changed_users:,} changed, {result.unchanged:,} unchanged,"
        f" {len(result.refused):,} refused."
    )


def _more(count: int) -> None:
    if count > PREVIEW_ROWS:
        say(f"… and {count - PREVIEW_ROWS:,} more (use --json for all of them).", style="dim")


@users_app.command("import")
def users_import(
    ctx: typer.Context,
    org: OrgOption,
    file: Annotated[Path, typer.Argument(help="CSV with email,name,role,max_tokens,...")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; save nothing.")
    ] = False,
    json_output: Json = False,
) -> None:
    """Create users and change allowances from a CSV file: every row, or none."""
    cli = Cli.of(ctx, json_output)
    rows = _read_file(cli, file)

    async def work(session: AsyncSession, act: Act) -> ImportResult:
        found = await find_org(session, org)  # import_users locks it
        with progress_bar() as progress:
            progress.add_task(f"Checking {len(rows):,} rows", total=None)
            return await csv_io.import_users(session, act, found.id, rows, dry_run=dry_run)

    result = cli.write(work)
    if cli.json:
        emit_json(result)
    else:
        print_import(result)
    if not result.accepted:
        cli.json = False  # the preview above already is the JSON answer
        cli.fail(csv_io.refusal(result))
    if not cli.json:
        if dry_run:
            say("Dry run: nothing was saved.", style="yellow")
        else:
            note(f"Imported {file}: all rows saved in one change.")


@users_app.command("seed")
def users_seed(
    ctx: typer.Context,
    org: OrgOption,
    count: Annotated[
        int, typer.Option(min=1, max=bulk.MAX_COUNT, help="How many users to create.")
    ],
    prefix: Annotated[
        str, typer.Option(help="Emails are PREFIX000000@bulk.example, numbered on.")
    ] = "user",
    max_tokens: MaxTokensOrMinimum = None,
    max_train_tokens: MaxTrainTokensOrMinimum = None,
    json_output: Json = False,
) -> None:
    """Create many active test users at once (load tests, demos), each with an allowance
    from the balance and a journal entry, in one change."""
    cli = Cli.of(ctx, json_output)
    allowances = _allowances(cli, max_tokens, max_train_tokens)

    async def work(db: Database) -> tuple[str, int, int]:
        found = await db.read(lambda session: find_org(session, org))
        inference = allowances.get(Kind.inference, found.min_inference)
        training = allowances.get(Kind.training, found.min_training)
        with progress_bar() as progress:
            progress.add_task(f"Creating {count:,} users in {found.name}", total=None)
            await bulk.seed_users(
                db,
                found.id,
                count,
                max_tokens=inference,
                max_train_tokens=training,
                prefix=prefix,
                act=now_act(),
            )
        return found.name, inference, training

    name, inference, training = cli.run(work)
    if cli.json:
        emit_json(
            {
                "organization": name,
                "users": count,
                "prefix": prefix,
                "max_tokens": inference,
                "max_train_tokens": training,
            }
        )
    else:
        say(
            f"Created {count:,} users in {name} ({prefix}…@{bulk.EMAIL_DOMAIN}) with"
            f" {inference:,} {INFERENCE} and {training:,} {TRAINING} each."
        )
