from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from tests.cli.conftest import Tokenadmin
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.passwords import verify_password
from tokenadmin.errors import Unauthenticated
from tokenadmin.models import Organization, Purchase
from tokenadmin.user import repository as user_repository


def test_allowance_apply_dry_run_changes_nothing_then_applies(
    tokenadmin: Tokenadmin, tmp_path: Path
) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    tokenadmin.user(org, "ben@example.com")
    changes = tmp_path / "allowances.csv"
    changes.write_text(
        "user,max_tokens,max_train_tokens\nana@example.com,500K,\nben@example.com,,100K\n"
    )

    preview = tokenadmin("allowance", "apply", "--org", org, str(changes), "--dry-run")
    assert "Dry run: nothing was saved." in preview.stdout
    assert "500,000" in preview.stdout
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 200_000
    assert tokenadmin.json("user", "show", "ben@example.com")["max_train_tokens"] == 0

    applied = tokenadmin.json("allowance", "apply", "--org", org, str(changes))
    assert applied["applied"]
    assert applied["balance_after"]["inference"]["allocated"] == 700_000
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 500_000
    assert tokenadmin.json("user", "show", "ben@example.com")["max_train_tokens"] == 100_000


def test_allowance_apply_refuses_every_row_when_one_fails(
    tokenadmin: Tokenadmin, tmp_path: Path
) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    changes = tmp_path / "allowances.csv"
    changes.write_text("email,max_tokens\nana@example.com,300K\nnobody@example.com,300K\n")
    result = tokenadmin("allowance", "apply", "--org", org, str(changes), expect=2)
    assert result.stderr.startswith("error: allowance_change_refused: ")
    assert "line 3: user_not_found" in result.stderr
    changes.write_text("email,max_tokens\nana@example.com,300K\nana@example.com,1.5\n")
    result = tokenadmin("allowance", "apply", "--org", org, str(changes), expect=2)
    assert "line 3: invalid_amount" in result.stderr
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 200_000


def test_allowance_set_checks_the_version(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    user = tokenadmin.user(org, "ana@example.com")
    tokenadmin("allowance", "set", "--org", org, "--user", "ana@example.com", "--max-tokens", "1M")
    result = tokenadmin(
        "allowance", "set", "--org", org, "--user", "ana@example.com",
        "--max-tokens", "3M", "--expected-version", str(user["version"]), expect=2,
    )  # fmt: skip
    assert result.stderr.startswith("error: version_conflict: ")
    preview = tokenadmin.json(
        "allowance", "set", "--org", org, "--user", "ana@example.com", "--max-tokens", "2M",
        "--dry-run",
    )  # fmt: skip
    assert preview["changes"][0]["after"] == 2_000_000
    assert not preview["applied"]
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 1_000_000


def test_usage_record_is_idempotent_and_refuses_what_does_not_fit(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    first = tokenadmin.json(
        "usage", "record", "--user", "ana@example.com", "--tokens", "1.5K", "--key", "k1"
    )
    assert first["remaining"] == 198_500
    again = tokenadmin(
        "usage", "record", "--user", "ana@example.com", "--tokens", "1.5K", "--key", "k1"
    )
    assert "already recorded" in again.stdout
    result = tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "2M", expect=2)
    assert result.stderr.startswith("error: insufficient_tokens: ")
    tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "0", expect=2)
    balance = tokenadmin.json("usage", "balance", "--user", "ana@example.com")
    assert balance["inference"]["used"] == 1_500
    assert balance["inference"]["available"] == 198_500


def test_a_users_life(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    created = tokenadmin.user(org, "Ana@Example.com", "--max-tokens", "300K", "--role", "admin")
    assert created["email"] == "ana@example.com"
    assert created["max_tokens"] == 300_000
    tokenadmin("user", "create", "--org", org, "--email", "nope", "--name", "N", expect=2)

    updated = tokenadmin.json(
        "user", "update", "ana@example.com", "--name", "Ana Lima", "--max-train-tokens", "20K"
    )
    assert updated["name"] == "Ana Lima"
    assert updated["max_train_tokens"] == 20_000
    tokenadmin("user", "update", "ana@example.com", expect=2)

    tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "1000")
    gone = tokenadmin.json("user", "deactivate", "ana@example.com")
    assert gone["status"] == "deactivated"
    assert gone["max_tokens"] == 1_000
    tokenadmin("user", "deactivate", "ana@example.com", expect=2)
    back = tokenadmin.json("user", "reactivate", "ana@example.com", "--max-tokens", "250K")
    assert back["status"] == "active"
    assert back["max_tokens"] == 250_000

    tokenadmin(
        "user", "set-password", "ana@example.com", "--password-stdin", input="short\n", expect=2
    )
    tokenadmin(
        "user",
        "set-password",
        "ana@example.com",
        "--password-stdin",
        input="correct horse battery\n",
    )
    tokenadmin(
        "user", "set-password", "ana@example.com", input="prompted password\nprompted password\n"
    )

    async def password_hash(session: AsyncSession) -> str | None:
        user = await user_repository.by_email(session, "ana@example.com")
        assert user is not None
        return user.password_hash

    assert verify_password(tokenadmin.query(password_hash), "prompted password")

    listed = tokenadmin.json("user", "list", "--org", org, "--search", "lima")
    assert [u["email"] for u in listed["users"]] == ["ana@example.com"]
    assert tokenadmin.json("user", "list", "--org", org, "--status", "deactivated")["total"] == 0
    other = tokenadmin.org("Other")
    tokenadmin("user", "show", "ana@example.com", "--org", other, expect=2)


def test_keys_are_created_listed_and_revoked(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    created = tokenadmin("key", "create", "--org", org, "--name", "backend", "--scope", "usage")
    key = created.stdout.strip()
    assert created.stdout == key + "\n"
    assert key.startswith("ta_")
    tokenadmin("key", "create", "--org", org, "--name", "x", "--scope", "root", expect=2)

    keys = tokenadmin.json("key", "list", "--org", org)
    assert [(k["name"], k["scopes"], k["revoked_at"]) for k in keys] == [
        ("backend", ["usage"], None)
    ]
    tokenadmin("key", "revoke", "--org", org, keys[0]["prefix"])
    assert tokenadmin.json("key", "list", "--org", org)[0]["revoked_at"] is not None

    async def authenticate(session: AsyncSession) -> str:
        try:
            await api_key_service.authenticate(session, key)
        except Unauthenticated as error:
            return error.code
        return "authenticated"

    assert tokenadmin.query(authenticate) == "unauthenticated"


def test_purchases_and_their_expiry(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.json("org", "create", "Initech", "--time-zone", "Europe/Berlin")["id"]
    kept = tokenadmin.json("purchase", "add", "--org", org, "--inference", "5M", "--payer", "ACME")
    lot = tokenadmin.json(
        "purchase", "add", "--org", org, "--training", "1M", "--expires", "2099-01-01"
    )
    assert lot["expires_at"] == "2098-12-31T23:00:00Z"  # midnight in Berlin
    tokenadmin("purchase", "add", "--org", org, expect=2)
    tokenadmin("purchase", "expire", "--org", org, lot["id"], expect=2)

    cleared = tokenadmin.json("purchase", "expire", "--org", org, lot["id"][:8], "--clear")
    assert cleared["expires_at"] is None
    expired = tokenadmin.json("purchase", "expire", "--org", org, lot["id"], "--now")
    assert expired["expired"]
    shown = tokenadmin.json("org", "show", org)
    assert shown["balance"]["training"]["capacity"] == 0
    assert shown["balance"]["inference"]["capacity"] == 5_000_000
    assert [p["id"] for p in tokenadmin.json("purchase", "list", "--org", org)] == [
        kept["id"],
        lot["id"],
    ]


def test_org_update_changes_the_policy(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    updated = tokenadmin.json(
        "org", "update", org, "--min-inference", "100K", "--time-zone", "Asia/Tokyo",
        "--overallocation",
    )  # fmt: skip
    assert updated["min_inference"] == 100_000
    assert updated["time_zone"] == "Asia/Tokyo"
    assert updated["overallocation"]
    result = tokenadmin("org", "update", org, "--time-zone", "Mars/Base", expect=2)
    assert result.stderr.startswith("error: invalid_time_zone: ")
    tokenadmin("org", "update", org, expect=2)


def test_journal_lists_entries_with_filters(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    tokenadmin.user(org, "ben@example.com")
    tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "700")

    entries = tokenadmin.json("journal", "list", "--org", org)
    assert entries[0]["action"] == "usage"
    assert entries[0]["actor"].startswith("cli:")
    ana = tokenadmin.json("journal", "list", "--org", org, "--user", "ana@example.com")
    assert {e["action"] for e in ana} == {"user_created", "usage"}
    training = tokenadmin.json("journal", "list", "--org", org, "--kind", "training")
    assert {e["action"] for e in training} == {"purchase", "user_created"}
    assert tokenadmin.json("journal", "list", "--org", org, "--since", "2999-01-01") == []
    assert len(tokenadmin.json("journal", "list", "--org", org, "--limit", "2")) == 2
    text = tokenadmin("journal", "list", "--org", org).stdout
    assert "ana@example.com" in text
    tokenadmin("journal", "list", "--org", org, "--since", "yesterday", expect=2)


def test_org_show_and_usage_balance_record_an_expiry_that_came_due(
    tokenadmin: Tokenadmin,
) -> None:
    org = tokenadmin.org(inference="10M", training="0")
    lot = tokenadmin.json(
        "purchase", "add", "--org", org, "--inference", "5M", "--expires", "2099-01-01"
    )
    tokenadmin.user(org, "ana@example.com")

    async def expire_meanwhile(session: AsyncSession) -> None:
        # As if the clock had passed the expiry without any change since.
        past = datetime.now(UTC) - timedelta(minutes=1)
        await session.execute(
            update(Purchase).where(Purchase.id == uuid.UUID(lot["id"])).values(expires_at=past)
        )
        await session.execute(
            update(Organization)
            .where(Organization.id == uuid.UUID(org))
            .values(next_expiry_at=past)
        )

    tokenadmin.query(expire_meanwhile)
    assert (
        tokenadmin.json("usage", "balance", "--user", "ana@example.com")["inference"]["available"]
        == 200_000
    )
    shown = tokenadmin.json("org", "show", org)
    assert shown["balance"]["inference"]["capacity"] == 10_000_000
    assert [p["expired"] for p in shown["purchases"]] == [False, True]
    expired = tokenadmin.json("journal", "list", "--org", org, "--action", "purchase_expired")
    assert [e["amount"] for e in expired] == [5_000_000]
