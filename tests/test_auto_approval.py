"""Auto-approval of token requests: the organization's rule (enabled, the largest amount,
the number per user and period, the allocated share of the capacity) approves a request at
once through the approval path, journaled with the rule; anything outside the rule, or
refused by the allowance rules, stays pending for the administrators."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, last_entry_id
from tokenadmin.clock import FakeClock
from tokenadmin.errors import RuleRefused
from tokenadmin.user import service as user_service

REQUESTS = "/v1/token-requests"
RULE = {
    "auto_approve_enabled": True,
    "auto_approve_max_amount": 300_000,
    "auto_approve_max_per_period": 1,
    "auto_approve_max_allocated_percent": 50,
}


async def _org(api: Api, **rule: Any) -> tuple[str, dict[str, Any]]:
    """1,000,000 inference tokens bought; Mia holds 200,000 of them (20 % allocated)."""
    org_id = await funded_org(api, 1_000_000, 100_000)
    if rule:
        await api.patch(f"/v1/organizations/{org_id}", RULE | rule, expect=200)
    member = await api.user(org_id, "mia@example.com", name="Mia")
    return org_id, member


async def _ask(api: Api, member: dict[str, Any], amount: int = 300_000, **fields: Any) -> Any:
    body = {"user": member["id"], "kind": "inference", "amount": amount, "reason": "evals"}
    return await api.post(REQUESTS, body | fields, expect=201)


async def test_with_the_rule_off_a_request_stays_pending(api: Api) -> None:
    org_id, member = await _org(api)
    org = await api.get(f"/v1/organizations/{org_id}")
    assert org["auto_approve_enabled"] is False
    assert org["auto_approve_max_amount"] == 1_000_000
    asked = await _ask(api, member)
    assert asked["state"] == "pending"
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000


async def test_a_request_within_the_rule_is_approved_at_once_and_journaled_with_it(
    api: Api,
) -> None:
    org_id, member = await _org(api, auto_approve_enabled=True)
    before = await last_entry_id(api, org_id)

    # 200,000 + 300,000 allocated of 1,000,000: exactly the 50 % the rule allows.
    asked = await _ask(api, member)

    assert asked["state"] == "approved"
    assert asked["decided_by"] == "system:auto-approval"
    assert asked["approved_amount"] == 300_000
    assert (await get_user(api, member["id"]))["max_tokens"] == 500_000
    balance = await api.balance(org_id)
    assert balance["inference"]["allocated"] == 500_000
    requested, change, decision = await entries_since(api, org_id, before)
    assert requested["action"] == "tokens_requested"
    assert (change["action"], change["allowance_delta"]) == ("allowance_changed", 300_000)
    assert change["actor"] == "system:auto-approval"
    assert decision["action"] == "token_request_approved"
    assert decision["actor"] == "system:auto-approval"
    assert decision["details"]["request_id"] == asked["id"]
    assert decision["details"]["rule"] == {
        "max_amount": 300_000,
        "max_per_period": 1,
        "max_allocated_percent": 50,
    }
    assert (await api.get(f"{REQUESTS}/{asked['id']}"))["state"] == "approved"


async def test_a_request_above_the_largest_amount_stays_pending(api: Api) -> None:
    _, member = await _org(api, auto_approve_max_amount=299_999)
    asked = await _ask(api, member)
    assert (asked["state"], asked["decided_by"]) == ("pending", None)
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000


async def test_the_number_per_user_and_period_is_counted_and_starts_again_next_period(
    api: Api, clock: FakeClock
) -> None:
    _, member = await _org(api, auto_approve_max_amount=100_000)
    assert (await _ask(api, member, 100_000))["state"] == "approved"
    second = await _ask(api, member, 50_000, kind="training")
    assert second["state"] == "pending", "one automatic approval per period, both kinds"
    await api.post(f"{REQUESTS}/{second['id']}/withdraw", {}, expect=200)

    clock.advance(days=32)
    assert (await _ask(api, member, 100_000))["state"] == "approved"
    assert (await get_user(api, member["id"]))["max_tokens"] == 400_000


async def test_nothing_is_approved_at_once_above_the_allocated_share(api: Api) -> None:
    org_id, member = await _org(api, auto_approve_max_allocated_percent=49)
    asked = await _ask(api, member)
    assert asked["state"] == "pending", "500,000 of 1,000,000 would be 50 % allocated"
    balance = await api.balance(org_id)
    assert balance["inference"]["allocated"] == 200_000


async def test_a_request_beyond_the_balance_stays_pending(api: Api) -> None:
    # 100 %: the share check keeps allocated within the capacity; 900,000 more would not fit.
    _, member = await _org(
        api,
        auto_approve_max_amount=900_000,
        auto_approve_max_allocated_percent=100,
        overallocation=True,
    )
    asked = await _ask(api, member, 900_000)
    assert asked["state"] == "pending"
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000


async def test_an_approval_the_allowance_rules_refuse_leaves_the_request_pending_whole(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    org_id, member = await _org(api, auto_approve_enabled=True)

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise RuleRefused("Only 0 inference tokens left.", code="exceeds_balance")

    monkeypatch.setattr(user_service, "update", refused)
    before = await last_entry_id(api, org_id)
    asked = await _ask(api, member)

    assert asked["state"] == "pending"
    entries = await entries_since(api, org_id, before)
    assert [e["action"] for e in entries] == ["tokens_requested"]
    pending = await api.get(f"/v1/organizations/{org_id}/token-requests")
    assert [r["id"] for r in pending["requests"]] == [asked["id"]]


async def test_the_rule_is_validated_and_its_changes_journaled(api: Api) -> None:
    org_id = await funded_org(api)
    path = f"/v1/organizations/{org_id}"
    for bad in (
        {"auto_approve_enabled": "yes"},
        {"auto_approve_max_amount": -1},
        {"auto_approve_max_amount": 2**53 + 1},
        {"auto_approve_max_amount": 1.5},
        {"auto_approve_max_per_period": -1},
        {"auto_approve_max_per_period": 10_001},
        {"auto_approve_max_allocated_percent": 101},
        {"auto_approve_max_allocated_percent": "80"},
    ):
        response = await api.call("PATCH", path, json=bad)
        error_of(response, 422, "invalid_request")
    assert (await api.get(path))["version"] == 1, "a refused change changes nothing"

    before = await last_entry_id(api, org_id)
    updated = await api.patch(path, RULE, expect=200)
    assert {field: updated[field] for field in RULE} == RULE
    (entry,) = await entries_since(api, org_id, before)
    assert entry["action"] == "policy_changed"
    assert entry["details"]["auto_approve_enabled"] == [False, True]
    assert entry["details"]["auto_approve_max_allocated_percent"] == [90, 50]
