"""`tokenadmin requests`: ask, list, approve (another amount too), deny, withdraw; each
request decided once, and a refused approval leaves it pending."""

from __future__ import annotations

import json

from tests.cli.conftest import Tokenadmin


def _ask(tokenadmin: Tokenadmin, amount: str = "300K", kind: str = "inference") -> str:
    asked = tokenadmin.json(
        "requests", "ask", "--user", "ana@example.com", "--kind", kind,
        "--amount", amount, "--reason", "a fine-tuning run",
    )  # fmt: skip
    assert asked["state"] == "pending"
    request_id: str = asked["id"]
    return request_id


def test_ask_list_and_approve_another_amount(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org(inference="1M")
    tokenadmin.user(org, "ana@example.com")
    request_id = _ask(tokenadmin)
    listed = tokenadmin("requests", "list", "--org", "Acme")
    assert "ana@example.com" in listed.stdout
    assert "300,000" in listed.stdout
    assert [r["id"] for r in tokenadmin.json("requests", "list", "--org", org)["requests"]] == [
        request_id
    ]

    approved = tokenadmin.json(
        "requests", "approve", request_id, "--amount", "100K", "--note", "start with this"
    )
    assert (approved["state"], approved["approved_amount"]) == ("approved", 100_000)
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 300_000
    assert tokenadmin.json("requests", "list", "--org", org)["requests"] == []
    mine = tokenadmin.json("requests", "list", "--user", "ana@example.com")
    assert [r["state"] for r in mine["requests"]] == ["approved"]

    again = tokenadmin("requests", "deny", request_id, "--note", "no", expect=2)
    assert "request_already_decided" in again.stderr


def test_an_approval_beyond_the_balance_exits_2_and_stays_pending(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org(inference="300K")
    tokenadmin.user(org, "ana@example.com")
    request_id = _ask(tokenadmin)
    refused = tokenadmin("requests", "approve", request_id, "--json", expect=2)
    assert json.loads(refused.stdout)["error"]["code"] == "exceeds_balance"
    assert tokenadmin.json("requests", "list", "--org", org)["total"] == 1
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 200_000


def test_deny_withdraw_and_bad_input(tokenadmin: Tokenadmin) -> None:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com")
    first = _ask(tokenadmin)
    pending = tokenadmin("requests", "ask", "--user", "ana@example.com", "--kind", "inference",
                         "--amount", "5", "--reason", "more", expect=2)  # fmt: skip
    assert "request_already_pending" in pending.stderr
    training = _ask(tokenadmin, "10K", "training")

    denied = tokenadmin.json("requests", "deny", first, "--note", "not this month")
    assert (denied["state"], denied["note"]) == ("denied", "not this month")
    assert tokenadmin.json("requests", "withdraw", training)["state"] == "withdrawn"
    states = tokenadmin.json("requests", "list", "--org", org, "--state", "any")
    assert sorted(r["state"] for r in states["requests"]) == ["denied", "withdrawn"]

    for amount in ("0", "-5", "1.5", "lots", "9007199254740993"):
        bad = tokenadmin("requests", "ask", "--user", "ana@example.com", "--kind", "inference",
                         "--amount", amount, "--reason", "x", expect=2)  # fmt: skip
        assert "invalid_amount" in bad.stderr
    blank = tokenadmin("requests", "ask", "--user", "ana@example.com", "--kind", "inference",
                       "--amount", "5", "--reason", " ", expect=2)  # fmt: skip
    assert "invalid_request" in blank.stderr
    assert "invalid_request" in tokenadmin("requests", "approve", "nope", expect=2).stderr
    assert "not_found" in tokenadmin("requests", "list", "--user", "zed@x.example", expect=2).stderr
    assert tokenadmin("requests", "list", expect=2).stderr
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 200_000


def test_org_update_sets_the_auto_approval_rule_and_a_request_within_it_is_approved(
    tokenadmin: Tokenadmin,
) -> None:
    org = tokenadmin.org(inference="1M")
    tokenadmin.user(org, "ana@example.com")
    for bad in (
        ("--auto-approve-max-amount", "lots"),
        ("--auto-approve-max-per-period", "-1"),
        ("--auto-approve-max-allocated-percent", "101"),
    ):
        assert "invalid_" in tokenadmin("org", "update", org, *bad, expect=2).stderr
    updated = tokenadmin.json(
        "org", "update", org, "--auto-approve", "--auto-approve-max-amount", "300K",
        "--auto-approve-max-per-period", "2", "--auto-approve-max-allocated-percent", "80",
    )  # fmt: skip
    assert updated["auto_approve_enabled"] is True
    assert (updated["auto_approve_max_amount"], updated["auto_approve_max_per_period"]) == (
        300_000,
        2,
    )
    assert "up to 300,000 tokens" in tokenadmin("org", "show", org).stdout

    asked = tokenadmin(
        "requests", "ask", "--user", "ana@example.com", "--kind", "inference",
        "--amount", "300K", "--reason", "evals",
    )  # fmt: skip
    assert "approved at once" in asked.stdout
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 500_000
    _ask(tokenadmin, "300001")  # above the largest amount: it stays pending (asserted)
