"""`tokenadmin users seed` (many test users at once) and `tokenadmin operator create`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.cli.conftest import Tokenadmin
from tokenadmin.auth.passwords import verify_password
from tokenadmin.models import Operator


def test_users_seed_creates_numbered_users_from_the_balance(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org(inference="10M")
    seeded = tokenadmin.json("users", "seed", "--org", org, "--count", "20", "--max-tokens", "250K")
    assert seeded["users"] == 20
    assert seeded["max_tokens"] == 250_000
    tokenadmin("users", "seed", "--org", org, "--count", "5", "--prefix", "load")
    page = tokenadmin.json("user", "list", "--org", org, "--sort", "email", "--limit", "100")
    assert page["total"] == 25
    emails = [u["email"] for u in page["users"]]
    assert emails[:2] == ["load000000@bulk.example", "load000001@bulk.example"]
    assert emails[-1] == "user000019@bulk.example"
    balance = tokenadmin.json("org", "show", org)
    assert balance["balance"]["inference"]["allocated"] == 20 * 250_000 + 5 * 200_000


def test_users_seed_beyond_the_balance_is_refused(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org(inference="1M")
    result = tokenadmin("users", "seed", "--org", org, "--count", "6", expect=2)
    assert result.stderr.startswith("error: exceeds_balance: ")
    assert tokenadmin.json("user", "list", "--org", org)["total"] == 0


def test_operator_create_reads_the_password_and_refuses_a_taken_email(
    tokenadmin: Tokenadmin,
) -> None:
    created = tokenadmin.json(
        "operator", "create", "--email", "Ops@Example.com", "--name", "Olga Ops",
        "--password-stdin", input="a-long-password\n",
    )  # fmt: skip
    assert created["email"] == "ops@example.com"

    async def stored(session: AsyncSession) -> str:
        operator = await session.scalar(select(Operator).where(Operator.email == created["email"]))
        assert operator is not None
        return operator.password_hash

    assert verify_password(tokenadmin.query(stored), "a-long-password")
    again = tokenadmin(
        "operator", "create", "--email", "ops@example.com", "--name", "Other",
        "--password-stdin", input="another-password\n", expect=2,
    )  # fmt: skip
    assert again.stderr.startswith("error: email_taken: ")
    short = tokenadmin(
        "operator", "create", "--email", "x@example.com", "--name", "X",
        "--password-stdin", input="short\n", expect=2,
    )  # fmt: skip
    assert short.stderr.startswith("error: weak_password: ")
