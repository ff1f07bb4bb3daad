from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncSession

from tests.cli.conftest import Tokenadmin
from tests.servers import free_port
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.principal import Principal
from tokenadmin.migrate import Upgraded, alembic_config, upgrade


def test_operator_key_prints_the_key_alone(tokenadmin: Tokenadmin) -> None:
    result = tokenadmin("operator-key", "--name", "bootstrap")
    key = result.stdout.strip()
    assert result.stdout == key + "\n"
    assert key.startswith("ta_")

    async def authenticate(session: AsyncSession) -> Principal:
        return await api_key_service.authenticate(session, key)

    principal = tokenadmin.query(authenticate)
    assert principal.is_operator
    assert principal.scopes == {"admin", "usage", "read"}
    assert principal.actor == "operator:bootstrap"


def test_errors_print_the_code_and_exit_2(tokenadmin: Tokenadmin) -> None:
    result = tokenadmin("org", "show", "Nowhere Inc", expect=2)
    assert result.stderr.startswith("error: not_found: No organization named 'Nowhere Inc'.")
    assert result.stdout == ""
    assert "Traceback" not in result.output

    refused = tokenadmin.json("org", "show", "Nowhere Inc", expect=2)
    assert refused["error"]["code"] == "not_found"


def test_bad_amounts_are_refused_with_the_option_named(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    result = tokenadmin("purchase", "add", "--org", org, "--inference", "1.5", expect=2)
    assert result.stderr.startswith("error: invalid_amount: --inference: '1.5' is 1.5 tokens")
    result = tokenadmin("purchase", "add", "--org", org, "--inference", "-5", expect=2)
    assert "negative" in result.stderr
    balance = tokenadmin.json("org", "show", org)["balance"]
    assert balance["inference"]["capacity"] == 10_000_000


def test_rule_refusals_exit_2_with_the_rule_code(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org(inference="300K")
    tokenadmin.user(org, "ana@example.com")
    result = tokenadmin(
        "allowance",
        "set",
        "--org",
        org,
        "--user",
        "ana@example.com",
        "--max-tokens",
        "150K",
        expect=2,
    )
    assert result.stderr.startswith("error: below_minimum: ")
    result = tokenadmin(
        "user",
        "create",
        "--org",
        org,
        "--email",
        "ben@example.com",
        "--name",
        "Ben",
        "--max-tokens",
        "250K",
        expect=2,
    )
    assert "exceeds_balance" in result.stderr
    assert tokenadmin.json("user", "list", "--org", org)["total"] == 1


def test_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    tokenadmin = Tokenadmin(f"sqlite:///{tmp_path / 'empty.db'}")
    result = tokenadmin("org", "list", expect=2)
    assert result.stderr.startswith("error: database_not_migrated: ")
    tokenadmin("migrate")
    assert "No organizations yet" in tokenadmin("org", "list").stdout
    assert tokenadmin.json("org", "list") == []


def test_migrate_says_whether_it_created_upgraded_or_left_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    tokenadmin = Tokenadmin(url)

    created = tokenadmin("migrate").stdout
    again = tokenadmin("migrate").stdout

    assert f"Created the tables at revision {head}." in created
    assert "up to date" not in created
    assert f"Already up to date at revision {head}; nothing to do." in again

    older = f"sqlite:///{tmp_path / 'older.db'}"
    assert upgrade(older, "0001") == Upgraded(None, "0001")
    upgraded = Tokenadmin(older)("migrate").stdout
    assert f"Upgraded from revision 0001 to {head}." in upgraded


def test_a_database_out_of_reach_says_why() -> None:
    tokenadmin = Tokenadmin(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    result = tokenadmin("org", "list", expect=2)
    assert "error: database_unavailable: The database could not be used: " in result.stderr
    assert "Idempotency-Key" not in result.stderr  # the API's advice, not the command's


def test_organizations_are_found_by_name_or_id(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org("Globex")
    by_name = tokenadmin.json("org", "show", "Globex")
    by_id = tokenadmin.json("org", "show", org)
    assert by_name["organization"]["id"] == by_id["organization"]["id"] == org
    result = tokenadmin("org", "show", "globex", expect=2)
    assert "Did you mean 'Globex'?" in result.stderr
    tokenadmin("org", "create", "Globex")
    result = tokenadmin("org", "show", "Globex", expect=2)
    assert result.stderr.startswith("error: invalid_request: 2 organizations are named 'Globex';")
