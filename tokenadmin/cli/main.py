"""The `tokenadmin` command: one tool for operators and scripts.

Every command calls the same service functions as the API (never HTTP), and every change
runs in one transaction by `cli:<login>`. See docs/cli.md for each command and option.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.cli.allowances import allowance_app
from tokenadmin.cli.common import Cli, Json, PasswordStdin, emit_json, out, progress_bar, say
from tokenadmin.cli.distribute import distribute
from tokenadmin.cli.events import events
from tokenadmin.cli.jobs import jobs
from tokenadmin.cli.models import models_app, personal_key_app
from tokenadmin.cli.orgs import org_app, purchase_app
from tokenadmin.cli.policy import boost_app, policy_app
from tokenadmin.cli.report import report_app
from tokenadmin.cli.requests import requests_app
from tokenadmin.cli.revert import batches, revert
from tokenadmin.cli.usage import journal_app, key_app, usage_app
from tokenadmin.cli.users import user_app, users_app
from tokenadmin.cli.webhooks import webhooks_app
from tokenadmin.config import get_settings
from tokenadmin.database import Database
from tokenadmin.errors import InvalidRequest, TokenAdminError
from tokenadmin.journal.service import VerifyReport
from tokenadmin.journal.service import verify as verify_journal

app = typer.Typer(
    name="tokenadmin",
    help="Token administration: organizations, allowances, metering and the journal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(org_app, name="org")
app.add_typer(purchase_app, name="purchase")
app.add_typer(user_app, name="user")
app.add_typer(users_app, name="users")
app.add_typer(allowance_app, name="allowance")
app.command("distribute")(distribute)
app.command("batches")(batches)
app.command("revert")(revert)
app.command("jobs")(jobs)
app.command("events")(events)
app.add_typer(policy_app, name="policy")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(boost_app, name="boost")
app.add_typer(usage_app, name="usage")
app.add_typer(journal_app, name="journal")
app.add_typer(key_app, name="key")
app.add_typer(requests_app, name="requests")
app.add_typer(report_app, name="report")
app.add_typer(models_app, name="models")
app.add_typer(personal_key_app, name="personal-key")

operator_app = typer.Typer(help="Platform operators: people who sign in to the dashboard.")
app.add_typer(operator_app, name="operator")


@app.callback()
def options(
    ctx: typer.Context,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="Database to use, overriding TOKENADMIN_DATABASE_URL"
            " (sqlite:///file.db or postgresql://...).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Token administration: organizations, allowances, metering and the journal."""
    ctx.obj = Cli(database_url=database_url)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [settings: 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port [settings: 8000].")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="Server processes [settings: 1].")
    ] = None,
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart when the code changes (development).")
    ] = False,
) -> None:
    """Run the API server (uvicorn)."""
    import uvicorn

    cli = Cli.of(ctx)
    settings = cli.settings()
    if cli.database_url:
        # The server's processes read their settings from the environment.
        os.environ["TOKENADMIN_DATABASE_URL"] = cli.database_url
        get_settings.cache_clear()
    if reload and (workers or 1) > 1:
        cli.fail(InvalidRequest("--reload runs one process; drop --workers."))
    bind_host = host or settings.host
    bind_port = port or settings.port
    processes = workers or settings.workers
    shown_host = f"[{bind_host}]" if ":" in bind_host else bind_host
    plural = "es" if processes > 1 else ""
    say(
        f"Serving tokenadmin on http://{shown_host}:{bind_port} (API docs at /docs)"
        f" with {processes} process{plural}, database {_safe(settings.database_url)}."
    )
    made = _metrics_directory() if processes > 1 and not reload else None
    try:
        uvicorn.run(
            "tokenadmin.app:create_app",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=None if reload else processes,
            reload=reload,
            log_level=settings.log_level,
            access_log=False,  # each request is logged once, by tokenadmin.access (logs.py)
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def _metrics_directory() -> Path | None:
    """Several processes: each writes its metrics to files in PROMETHEUS_MULTIPROC_DIR and a
    scrape of any of them sums them all (tokenadmin.metrics). The directory (the one set in the
    environment, else a new temporary one, removed at the end: returned) is emptied first, as
    a previous run's values would be summed in."""
    from tokenadmin.metrics import MULTIPROCESS_DIR

    chosen = os.environ.get(MULTIPROCESS_DIR)
    directory = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix="tokenadmin-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROCESS_DIR] = str(directory)  # the workers inherit it
    return None if chosen else directory


def _safe(url: str) -> str:
    """A database URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, location = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}" if ":" in credentials else url


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database tables (SQLite or PostgreSQL)."""
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from tokenadmin.cli.common import _database_error
    from tokenadmin.migrate import upgrade

    cli = Cli.of(ctx)
    url = cli.settings().database_url
    try:
        upgraded = upgrade(url)
    except CommandError as error:
        cli.fail(TokenAdminError(str(error), code="migration_failed"))
    except (SQLAlchemyError, OSError) as error:
        cli.fail(_database_error(error))
    say(f"Database {_safe(url)}: {upgraded}")


@app.command()
def demo(
    ctx: typer.Context,
    if_empty: Annotated[
        bool,
        typer.Option("--if-empty", help="Do nothing (but say how to get in) if there is data."),
    ] = False,
) -> None:
    """Load the demo organization Acme Corp: users, purchases and two months of usage."""
    from tokenadmin import demo as demo_loader

    cli = Cli.of(ctx)
    settings = cli.settings()
    base_url = f"http://{settings.host}:{settings.port}"

    async def load(db: Database) -> demo_loader.DemoResult | None:
        if await db.read(demo_loader.has_organizations):
            if not if_empty:
                raise InvalidRequest(
                    "The database already has organizations; the demo loads into an empty"
                    " one only (use --if-empty to skip quietly).",
                    code="database_not_empty",
                )
            return None
        with progress_bar() as progress:
            task = progress.add_task("Loading the demo: simulated days", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            return await demo_loader.load(db, settings, progress=advance)

    result = cli.run(load)
    if result is None:
        say("The database already has data; no demo loaded.")
        say(demo_loader.existing_how_to(base_url))
        return
    say(demo_loader.how_to(result, base_url))


@app.command()
def verify(ctx: typer.Context, json_output: Json = False) -> None:
    """Replay the journal and compare it with every stored balance (exit 1 if any differs)."""
    cli = Cli.of(ctx, json_output)

    async def check(db: Database) -> VerifyReport:
        with progress_bar(counted="entries replayed") as progress:
            task = progress.add_task("Verifying the journal", total=None)
            return await db.read(
                partial(
                    verify_journal,
                    progress=lambda entries: progress.update(task, completed=entries),
                ),
                snapshot=True,
            )

    report = cli.run(check)
    if cli.json:
        emit_json(
            {
                "clean": report.clean,
                "organizations": report.organizations,
                "users": report.users,
                "entries": report.entries,
                "differences": report.differences,
            }
        )
    else:
        say(
            f"Replayed {report.entries:,} journal entries of {report.organizations:,}"
            f" organizations and {report.users:,} users."
        )
        for difference in report.differences:
            out().print(Text.assemble(("differs: ", "red"), difference), soft_wrap=True)
        if report.clean:
            say("Every stored balance equals the replay of the journal.", style="green")
        else:
            say(f"{len(report.differences):,} differences found.", style="bold red")
    if not report.clean:
        raise typer.Exit(1)


@app.command("operator-key")
def operator_key(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
) -> None:
    """Create a platform-operator API key and print it alone (for scripts)."""
    cli = Cli.of(ctx)
    key_name = cli.name(name)

    async def work(session: AsyncSession, act: Act) -> str:
        _, secret = await api_key_service.create(
            session, act, org_id=None, name=key_name, scopes=["admin", "usage", "read"]
        )
        return secret

    typer.echo(cli.write(work))


@operator_app.command("create")
def operator_create(
    ctx: typer.Context,
    email: Annotated[str, typer.Option(help="Email address (the dashboard login).")],
    name: Annotated[str, typer.Option(help="Full name.")],
    password_stdin: PasswordStdin = False,
    json_output: Json = False,
) -> None:
    """Create a platform operator who signs in to the dashboard (password prompted, hidden)."""
    from tokenadmin.auth import service as auth_service
    from tokenadmin.cli.users import read_password

    cli = Cli.of(ctx, json_output)
    address, full_name = cli.email(email), cli.name(name)
    password = read_password(cli, password_stdin, prompt=True)
    assert password is not None

    async def work(session: AsyncSession, act: Act) -> tuple[str, str]:
        operator = await auth_service.create_operator(
            session, email=address, name=full_name, password=password, now=act.now
        )
        return str(operator.id), operator.email

    operator_id, created = cli.write(work)
    if not cli.emit_if_json({"id": operator_id, "email": created, "name": full_name}):
        say(f"Created the operator {created} ({operator_id}); they sign in to the dashboard.")


def main() -> None:
    app(prog_name="tokenadmin")
