"""Token requests through the API: asked, listed, approved (possibly another amount),
denied or withdrawn, each once; approving raises the allowance through the allowance
rules, and a refused approval leaves the request pending."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, last_entry_id, org_api

REQUESTS = "/v1/token-requests"


async def _org_with_member(api: Api, inference: int = 1_000_000) -> tuple[str, dict[str, Any]]:
    org_id = await funded_org(api, inference, 100_000)
    member = await api.user(org_id, "mia@example.com", name="Mia")
    return org_id, member


async def _ask(api: Api, user: str, amount: Any = 300_000, **fields: Any) -> dict[str, Any]:
    body = {"user": user, "kind": "inference", "amount": amount, "reason": "a fine-tuning run"}
    asked: dict[str, Any] = await api.post(REQUESTS, body | fields, expect=201)
    return asked


async def test_a_member_asks_and_the_request_is_pending_in_both_lists(api: Api) -> None:
    org_id, member = await _org_with_member(api)
    platform = await org_api(api, org_id, "usage")
    asked = await _ask(platform, "MIA@example.com")
    assert asked["state"] == "pending"
    assert (asked["user_id"], asked["email"], asked["amount"]) == (
        member["id"],
        "mia@example.com",
        300_000,
    )
    assert asked["reason"] == "a fine-tuning run"
    assert asked["decided_at"] is None
    assert asked["approved_amount"] is None

    reader = await org_api(api, org_id, "read")
    pending = await reader.get(f"/v1/organizations/{org_id}/token-requests")
    assert [r["id"] for r in pending["requests"]] == [asked["id"]]
    assert pending["total"] == 1
    mine = await platform.get(f"/v1/users/{member['id']}/token-requests")
    assert [r["id"] for r in mine["requests"]] == [asked["id"]]
    assert (await reader.get(f"{REQUESTS}/{asked['id']}"))["state"] == "pending"
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000, "asking moves nothing"


async def test_approving_raises_the_allowance_journals_it_and_bumps_the_version(
    api: Api,
) -> None:
    org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    admin = await org_api(api, org_id, "admin")
    before = await last_entry_id(api, org_id)

    approved = await admin.post(f"{REQUESTS}/{asked['id']}/approve", {"note": "go"}, expect=200)

    assert approved["state"] == "approved"
    assert approved["approved_amount"] == 300_000
    assert approved["note"] == "go"
    assert approved["decided_by"].startswith("key:")
    assert approved["version"] == asked["version"] + 1
    user = await get_user(api, member["id"])
    assert user["max_tokens"] == 500_000
    assert user["version"] == member["version"] + 1
    entries = await entries_since(api, org_id, before)
    change, audit = entries
    assert change["action"] == "allowance_changed"
    assert change["allowance_delta"] == 300_000
    assert asked["id"] in change["reason"]
    assert audit["action"] == "token_request_approved"
    assert audit["allowance_delta"] == 0
    assert audit["details"]["request_id"] == asked["id"]
    balance = await api.get(f"/v1/organizations/{org_id}/balance")
    assert balance["inference"]["allocated"] == 500_000
    pending = await admin.get(f"/v1/organizations/{org_id}/token-requests")
    assert pending["requests"] == []
    approved_list = await admin.get(
        f"/v1/organizations/{org_id}/token-requests", params={"state": "approved"}
    )
    assert [r["id"] for r in approved_list["requests"]] == [asked["id"]]


async def test_an_approval_may_grant_another_amount(api: Api) -> None:
    _org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    approved = await api.post(f"{REQUESTS}/{asked['id']}/approve", {"amount": 50_000}, expect=200)
    assert (approved["amount"], approved["approved_amount"]) == (300_000, 50_000)
    assert (await get_user(api, member["id"]))["max_tokens"] == 250_000


async def test_an_approval_beyond_the_balance_is_refused_and_the_request_stays_pending(
    api: Api,
) -> None:
    org_id, member = await _org_with_member(api, inference=400_000)
    asked = await _ask(api, member["id"])
    before = await last_entry_id(api, org_id)
    response = await api.call("POST", f"{REQUESTS}/{asked['id']}/approve", json={})
    details = error_of(response, 422, "exceeds_balance")
    assert details["shortfall"] == 100_000
    assert (await api.get(f"{REQUESTS}/{asked['id']}"))["state"] == "pending"
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000
    assert await last_entry_id(api, org_id) == before
    # A smaller grant fits.
    await api.post(f"{REQUESTS}/{asked['id']}/approve", {"amount": 200_000}, expect=200)


async def test_denying_needs_a_note_and_changes_no_allowance(api: Api) -> None:
    org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    error_of(
        await api.call("POST", f"{REQUESTS}/{asked['id']}/deny", json={"note": "  "}),
        422,
        "invalid_request",
    )
    before = await last_entry_id(api, org_id)
    denied = await api.post(f"{REQUESTS}/{asked['id']}/deny", {"note": "not this month"})
    assert (denied["state"], denied["note"], denied["approved_amount"]) == (
        "denied",
        "not this month",
        None,
    )
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000
    [entry] = await entries_since(api, org_id, before)
    assert (entry["action"], entry["reason"]) == ("token_request_denied", "not this month")


async def test_the_member_withdraws_and_may_then_ask_again(api: Api) -> None:
    org_id, member = await _org_with_member(api)
    platform = await org_api(api, org_id, "usage")
    asked = await _ask(platform, member["email"])
    again = await platform.call(
        "POST",
        REQUESTS,
        json={"user": member["id"], "kind": "inference", "amount": 1, "reason": "more"},
    )
    assert error_of(again, 409, "request_already_pending")["request_id"] == asked["id"]
    # Another kind is another request.
    await _ask(platform, member["email"], 1_000, kind="training")

    withdrawn = await platform.post(f"{REQUESTS}/{asked['id']}/withdraw", expect=200)
    assert withdrawn["state"] == "withdrawn"
    await _ask(platform, member["email"], 100_000)
    states = await api.get(f"/v1/users/{member['id']}/token-requests")
    assert sorted(r["state"] for r in states["requests"]) == ["pending", "pending", "withdrawn"]


@pytest.mark.parametrize("second", ["approve", "deny", "withdraw"])
async def test_a_request_is_decided_once(api: Api, second: str) -> None:
    org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    await api.post(f"{REQUESTS}/{asked['id']}/deny", {"note": "no"}, expect=200)
    before = await last_entry_id(api, org_id)
    body = {"note": "yes"} if second != "withdraw" else None
    response = await api.call("POST", f"{REQUESTS}/{asked['id']}/{second}", json=body)
    details = error_of(response, 409, "request_already_decided")
    assert details["state"] == "denied"
    assert (await get_user(api, member["id"]))["max_tokens"] == 200_000
    assert await last_entry_id(api, org_id) == before


async def test_readers_and_the_platform_may_not_decide(api: Api) -> None:
    org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    for scope in ("read", "usage"):
        caller = await org_api(api, org_id, scope)
        for action, body in (("approve", {}), ("deny", {"note": "no"})):
            response = await caller.call("POST", f"{REQUESTS}/{asked['id']}/{action}", json=body)
            error_of(response, 403, "forbidden")
    reader = await org_api(api, org_id, "read")
    error_of(await reader.call("POST", f"{REQUESTS}/{asked['id']}/withdraw"), 403, "forbidden")
    error_of(
        await reader.call(
            "POST",
            REQUESTS,
            json={"user": member["id"], "kind": "inference", "amount": 5, "reason": "x"},
        ),
        403,
        "forbidden",
    )
    assert (await api.get(f"{REQUESTS}/{asked['id']}"))["state"] == "pending"


async def test_another_organization_sees_nothing(api: Api) -> None:
    org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    other_org = await funded_org(api)
    other = await org_api(api, other_org, "admin", "usage", "read")
    rid = asked["id"]
    for method, path, body in (
        ("GET", f"{REQUESTS}/{rid}", None),
        ("POST", f"{REQUESTS}/{rid}/approve", {}),
        ("POST", f"{REQUESTS}/{rid}/deny", {"note": "no"}),
        ("POST", f"{REQUESTS}/{rid}/withdraw", None),
        ("GET", f"/v1/organizations/{org_id}/token-requests", None),
        ("GET", f"/v1/users/{member['id']}/token-requests", None),
    ):
        response = await other.call(method, path, json=body)
        assert response.status_code == 404, (path, response.text)
        assert rid not in response.text
        assert member["email"] not in response.text
    for ref in (member["id"], member["email"]):
        ask: dict[str, Any] = {"user": ref, "kind": "inference", "amount": 5, "reason": "x"}
        error_of(await other.call("POST", REQUESTS, json=ask), 404, "user_not_found")
    own = await other.get(f"/v1/organizations/{other_org}/token-requests", params={"state": "any"})
    assert own["requests"] == []
    assert (await api.get(f"{REQUESTS}/{rid}"))["state"] == "pending"


@pytest.mark.parametrize(
    "amount", [0, -5, 1.5, "100", True, None, 2**53 + 1, 10**30, float("1e300")]
)
async def test_amounts_outside_rule_8_are_refused(api: Api, amount: Any) -> None:
    org_id, member = await _org_with_member(api)
    body = {"user": member["id"], "kind": "inference", "amount": amount, "reason": "x"}
    response = await api.call("POST", REQUESTS, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in {"invalid_amount", "invalid_request"}
    page = await api.get(f"/v1/organizations/{org_id}/token-requests")
    assert page["total"] == 0


async def test_a_bad_approved_amount_or_a_missing_reason_is_refused(api: Api) -> None:
    _org_id, member = await _org_with_member(api)
    for reason in ("", "   "):
        body = {"user": member["id"], "kind": "inference", "amount": 5, "reason": reason}
        error_of(await api.call("POST", REQUESTS, json=body), 422, "invalid_request")
    asked = await _ask(api, member["id"])
    for amount in (0, -1, 0.5, 2**53 + 1):
        response = await api.call(
            "POST", f"{REQUESTS}/{asked['id']}/approve", json={"amount": amount}
        )
        assert response.status_code == 422, response.text
    assert (await api.get(f"{REQUESTS}/{asked['id']}"))["state"] == "pending"


async def test_an_approval_past_2_to_the_53_is_refused(api: Api) -> None:
    org_id = await funded_org(api, 10**6, overallocation=True)
    member = await api.user(org_id, "mia@example.com")
    await api.patch(f"/v1/users/{member['id']}", {"max_tokens": 2**53 - 10}, expect=200)
    asked = await _ask(api, member["id"], 100)
    response = await api.call("POST", f"{REQUESTS}/{asked['id']}/approve", json={})
    assert response.status_code == 422, response.text
    assert (await get_user(api, member["id"]))["max_tokens"] == 2**53 - 10
    assert (await api.get(f"{REQUESTS}/{asked['id']}"))["state"] == "pending"


async def test_a_replayed_ask_and_approval_answer_the_first_answer(api: Api) -> None:
    _org_id, member = await _org_with_member(api)
    body = {"user": member["id"], "kind": "inference", "amount": 1_000, "reason": "x"}
    key = uuid.uuid4().hex
    first = await api.call("POST", REQUESTS, json=body, idempotency_key=key, expect=201)
    again = await api.call("POST", REQUESTS, json=body, idempotency_key=key, expect=201)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    rid = first.json()["id"]
    key = uuid.uuid4().hex
    path = f"{REQUESTS}/{rid}/approve"
    approved = await api.call("POST", path, json={}, idempotency_key=key, expect=200)
    replayed = await api.call("POST", path, json={}, idempotency_key=key, expect=200)
    assert replayed.json() == approved.json()
    assert (await get_user(api, member["id"]))["max_tokens"] == 201_000
    page = await api.get(f"/v1/users/{member['id']}/token-requests")
    assert page["total"] == 1


async def test_a_deactivated_user_can_not_ask_and_their_request_can_not_be_approved(
    api: Api,
) -> None:
    _org_id, member = await _org_with_member(api)
    asked = await _ask(api, member["id"])
    await api.post(f"/v1/users/{member['id']}/deactivate", expect=200)
    response = await api.call("POST", f"{REQUESTS}/{asked['id']}/approve", json={})
    error_of(response, 409, "user_deactivated")
    body = {"user": member["id"], "kind": "training", "amount": 5, "reason": "x"}
    error_of(await api.call("POST", REQUESTS, json=body), 409, "user_deactivated")
    await api.post(f"{REQUESTS}/{asked['id']}/deny", {"note": "you left"}, expect=200)
