"""What every command shares: settings, the database, who acts, finding things, output.

A command calls the same service functions as the API, inside `Cli.write` (one
transaction, committed once, by `Database.write`) or `Cli.read`. A TokenAdminError, a
database that can't be reached and a bad option all end the same way: one line
`error: <code>: <message>` on stderr (and the error as JSON on stdout with --json), exit 2.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import typer
from pydantic import BaseModel, EmailStr, TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.amounts import parse_amount
from tokenadmin.clock import SystemClock
from tokenadmin.config import Settings, get_settings
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest, NotFound, TokenAdminError, Unavailable
from tokenadmin.models import Organization, User
from tokenadmin.organization import repository as organization_repository
from tokenadmin.organization import service as organization_service
from tokenadmin.user import repository as user_repository
from tokenadmin.user.service import find_by_ref

T = TypeVar("T")

EXIT_ERROR = 2
"""Exit status of every refusal and bad input (click uses 2 for usage errors too)."""

WIDTH_WHEN_NOT_A_TERMINAL = 200


def _console(*, stderr: bool) -> Console:
    # Made per use, so it writes to the sys.stdout of the moment (tests swap it).
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Files and pipes: long lines rather than cells folded to 80 columns.
        console.width = WIDTH_WHEN_NOT_A_TERMINAL
    return console


def out() -> Console:
    return _console(stderr=False)


def err() -> Console:
    return _console(stderr=True)


def actor() -> str:
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no login name, as in some containers
        name = "unknown"
    return f"cli:{name}"


class DatabaseUnavailable(TokenAdminError):
    code = "database_unavailable"
    status_code = 503


def _database_error(error: Exception) -> TokenAdminError:
    text = str(error.orig if isinstance(error, DBAPIError) else error)
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return TokenAdminError(
            "The database has no tokenadmin tables yet; run `tokenadmin migrate` first.",
            code="database_not_migrated",
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return DatabaseUnavailable(f"The database could not be used: {first_line}")


def now_act() -> Act:
    """Who acts (`cli:<login>`) and when (now): stamped on every journal entry of a change."""
    return Act(actor(), SystemClock().now())


Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
OrgOption = Annotated[
    str, typer.Option("--org", metavar="ORG", help="Organization id or exact name.")
]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Preview only; save nothing.")]
Reason = Annotated[str | None, typer.Option(help="Why, for the journal.")]
_emails = TypeAdapter(EmailStr)


@dataclass
class Cli:
    """The state of one invocation: the global options and how to print."""

    database_url: str | None = None
    json: bool = False

    @classmethod
    def of(cls, ctx: typer.Context, json_output: bool = False) -> Cli:
        base = ctx.find_root().obj
        cli = cls(database_url=base.database_url if isinstance(base, Cli) else None)
        cli.json = json_output
        return cli

    def settings(self) -> Settings:
        try:
            settings = get_settings()
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(p) for p in problem.get("loc", ()))
            self.fail(InvalidRequest(f"TOKENADMIN_{where.upper()}: {problem.get('msg')}"))
        if self.database_url:
            settings = settings.model_copy(update={"database_url": self.database_url})
        return settings

    # --- running ------------------------------------------------------------------------

    def run(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run `work` with a database of its own, turning every refusal into exit 2."""
        settings = self.settings()
        self._check_database_url(settings)

        async def main() -> T:
            db = Database(settings.database_url, pool_size=2)
            try:
                return await work(db)
            finally:
                await db.dispose()

        try:
            return asyncio.run(main())
        except Unavailable as error:  # the database out of reach: say why, as below
            cause = error.__cause__
            self.fail(_database_error(cause) if isinstance(cause, Exception) else error)
        except TokenAdminError as error:
            self.fail(error)
        except (SQLAlchemyError, OSError) as error:
            self.fail(_database_error(error))

    def _check_database_url(self, settings: Settings) -> None:
        url = settings.database_url
        if not url.startswith(("sqlite", "postgres")):
            self.fail(
                InvalidRequest(
                    f"Unsupported database URL '{url.split('://')[0]}://...'; use"
                    " sqlite:///FILE or postgresql://USER@HOST/DATABASE.",
                )
            )
        if not settings.is_sqlite:
            return
        path = settings.sqlite_path if "///" in url else None
        if path is None or str(path) in ("", ":memory:"):
            self.fail(
                InvalidRequest(
                    "SQLite needs a file, as in sqlite:///tokenadmin.db (a database in memory"
                    " would end with the command)."
                )
            )
        if not path.exists():
            # Don't leave an empty database file behind a mistyped path.
            self.fail(
                TokenAdminError(
                    f"There is no database at {path}; create it with `tokenadmin migrate`.",
                    code="database_not_migrated",
                )
            )

    def emit_if_json(self, value: Any) -> bool:
        """With --json, print `value` as JSON (emit_json) and say so: the command then prints
        nothing else."""
        if self.json:
            emit_json(value)
        return self.json

    def write(self, work: Callable[[AsyncSession, Act], Awaitable[T]]) -> T:
        """One change, in one transaction, by `cli:<login>` at the current time."""

        async def change(db: Database) -> T:
            act = now_act()
            return await db.write(lambda session: work(session, act))

        return self.run(change)

    def read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async def look(db: Database) -> T:
            return await db.read(work)

        return self.run(look)

    # --- input --------------------------------------------------------------------------

    def amount(self, option: str, text: str | None, *, positive: bool = False) -> int | None:
        """An amount option as people write it (250K, 1.5M, 250,000); None when not given."""
        if text is None:
            return None
        try:
            return parse_amount(text, positive=positive)
        except ValueError as error:
            self.fail(
                InvalidRequest(
                    f"{option}: {error}",
                    code="invalid_amount",
                    details={"option": option, "value": text},
                )
            )

    def name(self, text: str) -> str:
        """A name (of a user, an organization, a key) without surrounding spaces."""
        if not 1 <= len(text.strip()) <= 200:
            self.fail(InvalidRequest("Names are 1 to 200 characters."))
        return text.strip()

    def id_of(self, text: str, what: str, *, code: str | None = None) -> uuid.UUID:
        """An id given on the command line (a request, a webhook, a boost, a key), or the
        command fails: "'x' is not a <what> id." (`code`: a refusal's own, such as
        boost_not_found; else invalid_request)."""
        try:
            return uuid.UUID(text.strip())
        except ValueError:
            self.fail(
                InvalidRequest(f"'{text}' is not a {what} id.", details={what: text}, code=code)
            )

    def email(self, text: str) -> str:
        try:
            return _emails.validate_python(text.strip())
        except ValidationError:
            self.fail(InvalidRequest(f"'{text}' is not an email address."))

    # --- output -------------------------------------------------------------------------

    def fail(self, error: TokenAdminError) -> NoReturn:
        if self.json:
            emit_json(error.to_dict())
        err().print(Text(f"error: {error.code}: {error.message}"), soft_wrap=True)
        for row in error.details.get("refused", []):
            if isinstance(row, dict) and "message" in row:
                where = f"line {row['line']}" if "line" in row else f"row {row.get('index', '?')}"
                err().print(Text(f"  {where}: {row.get('code')}: {row['message']}"), soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"can't write {type(value).__name__} as JSON")


def emit_json(value: Any) -> None:
    """JSON on stdout, plain (no colors, no wrapping), for scripts."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [item.model_dump(mode="json") for item in value]
    typer.echo(json.dumps(value, indent=2, default=_default))


def cell(value: Any) -> Text:
    """A table cell that shows the value as it is (user data is never read as markup)."""
    if value is None:
        return Text("—", style="dim")
    if isinstance(value, bool):
        return Text("yes" if value else "no")
    if isinstance(value, int):
        return Text(f"{value:,}", justify="right")
    if isinstance(value, datetime):
        return Text(value.strftime("%Y-%m-%d %H:%M"))
    return Text(str(value))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    grid = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(cell(value) for value in row))
    return grid


def progress_bar(*, counted: str | None = None) -> Progress:
    """Progress of long work, on stderr, shown only to a person at a terminal.

    With `counted` (e.g. "entries replayed") it counts without a known total; otherwise
    it is a bar of done / total."""
    console = err()
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}")]
    if counted is not None:
        columns.append(TextColumn("{task.completed:,} " + counted))
    else:
        columns += [BarColumn(), MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def say(message: str, *, style: str | None = None) -> None:
    """A line for people, on stdout (scripts use --json, where this is not printed)."""
    out().print(Text(message, style=style or ""), soft_wrap=True)


def note(message: str) -> None:
    """A line for people that must not mix with what a script reads: on stderr."""
    err().print(Text(message), soft_wrap=True)


def parse_moment(option: str, text: str | None, time_zone: str) -> datetime | None:
    """A date or time; without an offset it is read in the organization's time zone."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise InvalidRequest(
            f"{option}: '{text}' is not a date or time; write 2026-12-31, 2026-12-31T18:00"
            " or 2026-12-31T18:00+01:00.",
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(time_zone))
    return moment.astimezone(UTC)


# --- finding things -------------------------------------------------------------------


async def find_org(session: AsyncSession, ref: str) -> Organization:
    """An organization by id or by exact name."""
    try:
        org_id = uuid.UUID(ref)
    except ValueError:
        org_id = None
    if org_id is not None:
        return await organization_service.get(session, org_id)
    orgs = await organization_repository.list_all(session)
    matches = [o for o in orgs if o.name == ref]
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(str(o.id) for o in matches)
        raise InvalidRequest(
            f"{len(matches)} organizations are named '{ref}'; give one of their ids: {ids}.",
        )
    similar = [o.name for o in orgs if o.name.casefold() == ref.casefold()]
    hint = f" Did you mean '{similar[0]}'?" if similar else ""
    raise NotFound(f"No organization named '{ref}'.{hint}", details={"organization": ref})


async def lock_org(session: AsyncSession, act: Act, ref: str) -> Organization:
    """The organization, locked for a change of its token state and brought up to date."""
    org = await find_org(session, ref)
    return await organization_service.lock_for_change(session, act, org.id)


async def find_user(session: AsyncSession, ref: str, org: Organization | None = None) -> User:
    """A user by email or id; when `org` is given, only one of its users."""
    if org is None:
        return await find_by_ref(session, None, ref, where="")
    return await find_by_ref(session, org.id, ref, where=org.name)


async def lock_user(
    session: AsyncSession, act: Act, ref: str, org_ref: str | None = None
) -> tuple[User, Organization]:
    """A user and their organization, locked for a change, as the API's user routes do."""
    org = await find_org(session, org_ref) if org_ref is not None else None
    user = await find_user(session, ref, org)
    locked = await organization_service.lock_for_change(session, act, user.org_id)
    fresh = await user_repository.get(session, user.id)
    assert fresh is not None
    return fresh, locked
