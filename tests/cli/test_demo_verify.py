from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.cli.conftest import Tokenadmin
from tokenadmin.auth.passwords import verify_password
from tokenadmin.models import Operator


def test_demo_loads_acme_and_verify_is_clean(tokenadmin: Tokenadmin) -> None:
    shown = tokenadmin("demo").stdout
    assert "admin@acme.example / demo-password" in shown
    assert "ops@tokenadmin.example / demo-password" in shown
    assert "http://127.0.0.1:8000/docs" in shown
    assert shown.count("ta_") >= 2
    assert "curl" in shown

    org = tokenadmin.json("org", "show", "Acme Corp")
    assert org["organization"]["time_zone"] == "Europe/Berlin"
    assert len(org["purchases"]) == 3
    assert any(p["training_amount"] and not p["inference_amount"] for p in org["purchases"])
    assert len(org["balance"]["expiring_purchases"]) == 1
    assert org["balance"]["inference"]["used"] > 0

    users = tokenadmin.json("user", "list", "--org", "Acme Corp", "--limit", "100")
    assert users["total"] == 25
    emails = {u["email"] for u in users["users"]}
    assert "admin@acme.example" in emails
    assert all(email.endswith("@acme.example") for email in emails)
    active = [u for u in users["users"] if u["status"] == "active"]
    assert all(u["max_tokens"] >= 200_000 for u in active)
    assert len({u["max_tokens"] for u in active}) > 5

    # Two members wait for more tokens: the admin's home lists their requests.
    pending = tokenadmin.json("requests", "list", "--org", "Acme Corp")
    assert pending["total"] == 2
    assert {(r["email"], r["kind"], r["state"]) for r in pending["requests"]} == {
        ("lea.wolf@acme.example", "inference", "pending"),
        ("jonas.neumann@acme.example", "training", "pending"),
    }

    # Two periods: the previous month's started and ended for real.
    started = tokenadmin.json("journal", "list", "--org", "Acme Corp", "--action", "period_started")
    assert len(started) == 1
    report = tokenadmin.json("verify")
    assert report["clean"]
    assert report["users"] == 25
    assert report["entries"] > 1000

    # Loaded once: --if-empty leaves it alone, without it the demo refuses.
    again = tokenadmin("demo", "--if-empty").stdout
    assert "no demo loaded" in again
    assert "admin@acme.example" in again
    assert "ops@tokenadmin.example" in again
    tokenadmin("demo", expect=2)
    assert len(tokenadmin.json("org", "list")) == 1
    assert tokenadmin.json("user", "list", "--org", "Acme Corp")["total"] == 25

    async def operator_hash(session: AsyncSession) -> str:
        found = await session.scalar(
            select(Operator.password_hash).where(Operator.email == "ops@tokenadmin.example")
        )
        assert found is not None
        return found

    assert verify_password(tokenadmin.query(operator_hash), "demo-password")


def test_verify_reports_a_clean_database(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    result = tokenadmin("verify")
    assert "Every stored balance equals the replay of the journal." in result.stdout


@pytest.mark.tampers
def test_verify_exits_1_when_a_stored_balance_was_tampered_with(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")

    async def tamper(session: AsyncSession) -> None:
        await session.execute(
            text("UPDATE users SET max_tokens = max_tokens + 1000 WHERE email = 'ana@example.com'")
        )

    tokenadmin.query(tamper)
    result = tokenadmin("verify", expect=1)
    assert "ana@example.com" in result.stdout
    assert "differences found" in result.stdout
    report = tokenadmin.json("verify", expect=1)
    assert not report["clean"]
    assert any("allowance: stored 201,000, expected 200,000" in d for d in report["differences"])
