"""The Ask Sage API's endpoints that asksageclient has no method for, its refusals, and
its access tokens, called with httpx."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.asksage.conftest import Org, make_org
from tests.helpers import Api
from tests.scenarios import get_user, journal
from tokenadmin.asksage import access_token
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database


async def call(
    client: httpx.AsyncClient, path: str, token: str | None, expect: int = 200, **kw: Any
) -> Any:
    headers = {} if token is None else {"x-access-tokens": token}
    response = await client.post(path, headers={**headers, **kw.pop("headers", {})}, **kw)
    assert response.status_code == expect, response.text
    body = response.json()
    assert body["status"] == expect, body
    if expect >= 400:
        assert isinstance(body["response"], str)
        assert body["response"]
    return body


async def token_of(client: httpx.AsyncClient, email: str, key: str) -> str:
    body = await call(
        client, "/user/get-token-with-api-key", None, json={"email": email, "api_key": key}
    )
    token: str = body["response"]["access_token"]
    return token


async def test_every_refusal_is_an_envelope_with_its_status(
    client: httpx.AsyncClient, org: Org
) -> None:
    member = org.member.key
    no_token = await call(client, "/server/count-monthly-tokens", None, 401)
    assert "x-access-tokens" in no_token["response"]
    await call(client, "/server/count-monthly-tokens", "ta_wrong", 401)
    await call(client, "/server/count-monthly-tokens", "ast_wrong", 401)
    await call(client, "/server/no-such-thing", member, 404)
    assert (await client.get("/server/get-models")).json()["status"] == 405
    bad = await call(client, "/server/request-tokens", member, 422, json={"tokens": "many"})
    assert bad["code"] == "invalid_request"
    assert bad["response"].startswith("tokens:")
    broken = await call(
        client,
        "/server/tokenizer",
        member,
        400,
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert broken["code"] == "malformed_json"
    await call(client, "/server/tokenizer", member, 400, json=["a list"])
    await call(client, "/server/tokenizer", member, 422, json={})
    unknown = await call(client, "/user/admin-get-user-count", org.admin.key, 422, json={"x": 1})
    assert "x" in unknown["response"]


async def test_access_tokens_expire_and_stop_with_their_key_or_user(
    client: httpx.AsyncClient, org: Org, api: Api, db: Database, clock: FakeClock
) -> None:
    token = await token_of(client, org.member.email, org.member.key)
    assert token.startswith(access_token.TOKEN_PREFIX)
    await call(client, "/server/count-monthly-tokens", token)
    clock.advance(minutes=61)  # TOKENADMIN_ACCESS_TOKEN_MINUTES defaults to 60
    expired = await call(client, "/server/count-monthly-tokens", token, 401)
    assert "get-token-with-api-key" in expired["response"]
    assert await db.write(lambda s: access_token.forget_expired(s, clock.now())) == 1

    token = await token_of(client, org.member.email.upper(), org.member.key)
    await call(
        client,
        "/user/admin-update-user-banned",
        org.admin.key,
        json={"id": org.member.id, "banned": True},
    )
    await call(client, "/server/count-monthly-tokens", token, 401)
    await call(client, "/server/count-monthly-tokens", org.member.key, 401)


async def test_tokens_are_for_personal_keys_and_their_owner(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    service_key = await api.key(org.id, "admin")
    not_personal = await call(
        client,
        "/user/get-token-with-api-key",
        None,
        403,
        json={"email": org.admin.email, "api_key": service_key},
    )
    assert not_personal["code"] == "personal_key_required"
    someone_else = await call(
        client,
        "/user/get-token-with-api-key",
        None,
        401,
        json={"email": org.admin.email, "api_key": org.member.key},
    )
    assert "owner" in someone_else["response"]
    await call(client, "/user/get-token-with-api-key", None, 422, json={"email": org.admin.email})
    # An organization's admin key acts for the organization, not as a user.
    await call(client, "/user/admin-get-user-count", service_key)
    member_only = await call(client, "/server/count-monthly-tokens", service_key, 403)
    assert member_only["code"] == "personal_key_required"


async def test_admins_read_their_organization_and_export_it(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    admin = org.admin.key
    await api.use(org.member.email, 1_000)
    stats = (await call(client, "/user/admin-get-token-stats", admin))["response"]
    assert stats["inference"]["capacity"] == 1_000_000
    assert stats["inference"]["allocated"] == 400_000
    assert stats["inference"]["used"] == 1_000
    purchased = await call(client, "/user/admin-total-purchased-tokens-organization", admin)
    assert purchased["response"] == {"inference": 1_000_000, "training": 100_000}
    used = await call(client, "/user/admin-used-tokens-for-organization", admin, json={})
    assert used["response"] == {"inference": 1_000, "training": 0}
    assert (await call(client, "/user/admin-get-user-count", admin))["response"] == 2
    csv = await client.post("/user/admin-export-users-csv", headers={"x-access-tokens": admin})
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("email,name,role,status,max_tokens")
    assert [line.split(",")[0] for line in lines[1:]] == [org.admin.email, org.member.email]
    member = await call(client, "/user/admin-get-token-stats", org.member.key, 403)
    assert "administrator" in member["response"]
    await call(client, "/user/admin-export-users-csv", org.member.key, 403)


async def test_no_one_reaches_another_organization(
    client: httpx.AsyncClient, org: Org, api: Api, db: Database, clock: FakeClock
) -> None:
    other = await make_org(api, db, clock, name="Globex")
    admin = org.admin.key
    body = {"id": other.member.id, "tokens": 300_000}
    await call(client, "/user/admin-update-user-tokens", admin, 404, json=body)
    by_email = {"id": other.member.email, "banned": True}
    await call(client, "/user/admin-update-user-banned", admin, 404, json=by_email)
    await call(client, "/user/admin-get-token-stats", admin, 404, json={"org_id": other.id})
    await call(client, "/server/superadmin-get-all-organizations", admin, 403)
    assert (await get_user(api, other.member.id))["max_tokens"] == 200_000
    assert (await get_user(api, other.member.id))["status"] == "active"


async def test_banning_deactivates_and_unbanning_reactivates(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    admin = org.admin.key
    body = {"id": org.member.id, "banned": True}
    banned = await call(client, "/user/admin-update-user-banned", admin, json=body)
    assert banned["response"]["banned"] is True
    again = await call(client, "/user/admin-update-user-banned", admin, 409, json=body)
    assert again["code"] == "already_deactivated"
    body["banned"] = False
    unbanned = await call(client, "/user/admin-update-user-banned", admin, json=body)
    assert (unbanned["response"]["banned"], unbanned["response"]["max_tokens"]) == (False, 200_000)
    actions = [e["action"] for e in await journal(api, org.id, user_id=org.member.id)]
    assert "user_deactivated" in actions
    assert "user_reactivated" in actions


async def test_token_requests_from_asking_to_approval(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    member, admin = org.member.key, org.admin.key
    ask = {"tokens": 50_000, "kind": "inference", "reason": "Quarter-end reports"}
    asked = (await call(client, "/server/request-tokens", member, json=ask))["response"]
    assert asked["state"] == "pending"
    twice = await call(client, "/server/request-tokens", member, 409, json=ask)
    assert twice["code"] == "request_already_pending"
    mine = (await call(client, "/server/get-my-token-requests", member))["response"]
    assert [r["id"] for r in mine["requests"]] == [asked["id"]]
    await call(client, "/server/admin-get-token-requests", member, 403)
    pending = (await call(client, "/server/admin-get-token-requests", admin))["response"]
    assert [r["id"] for r in pending["requests"]] == [asked["id"]]
    await call(
        client,
        "/server/admin-review-token-request",
        member,
        403,
        json={"id": asked["id"], "decision": "approve"},
    )
    review = {"id": asked["id"], "decision": "approve", "tokens": 40_000, "note": "Most of it"}
    approved = await call(client, "/server/admin-review-token-request", admin, json=review)
    assert (approved["response"]["state"], approved["response"]["approved_amount"]) == (
        "approved",
        40_000,
    )
    decided = await call(client, "/server/admin-review-token-request", admin, 409, json=review)
    assert decided["code"] == "request_already_decided"
    assert (await get_user(api, org.member.id))["max_tokens"] == 240_000
    deny = {"id": str(uuid.uuid4()), "decision": "deny", "note": "no"}
    await call(client, "/server/admin-review-token-request", admin, 404, json=deny)

    # Within the organization's auto-approval rule, the request is approved as it is asked.
    await api.patch(f"/v1/organizations/{org.id}", {"auto_approve_enabled": True}, expect=200)
    small = {"tokens": 5_000, "kind": "training", "reason": "An evaluation set"}
    at_once = (await call(client, "/server/request-tokens", member, json=small))["response"]
    assert (at_once["state"], at_once["decided_by"]) == ("approved", "system:auto-approval")
    assert (await get_user(api, org.member.id))["max_train_tokens"] == 15_000


async def test_distribution_preview_then_execute(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    admin = org.admin.key
    rule = {"inference": {"method": "fixed", "amount": 10_000}}
    preview = (await call(client, "/server/admin-token-distribution-preview", admin, json=rule))[
        "response"
    ]
    assert (preview["applied"], preview["users"]) == (False, 2)
    assert (await get_user(api, org.member.id))["max_tokens"] == 200_000
    execute = {**rule, "preview_token": preview["preview_token"]}
    done = (await call(client, "/server/admin-token-distribution-execute", admin, json=execute))[
        "response"
    ]
    assert done["applied"] is True
    assert (await get_user(api, org.member.id))["max_tokens"] == 210_000
    stale = await call(client, "/server/admin-token-distribution-execute", admin, 409, json=execute)
    assert stale["code"] == "preview_stale"
    too_much = {"inference": {"method": "fixed", "amount": 900_000}}
    refused = await call(
        client, "/server/admin-token-distribution-execute", admin, 422, json=too_much
    )
    assert refused["code"] == "allowance_change_refused"


async def test_operators_create_organizations_and_record_purchases(
    client: httpx.AsyncClient, org: Org, operator_key: str
) -> None:
    ops = operator_key
    created = (
        await call(client, "/server/superadmin-add-organization", ops, json={"name": "Initech"})
    )["response"]
    purchase = {"org_id": created["id"], "inference_amount": 500_000, "note": "PO 7"}
    await call(client, "/server/superadmin-add-organization-purchase", ops, json=purchase)
    bad = {**purchase, "inference_amount": -5}
    refused = await call(client, "/server/superadmin-add-organization-purchase", ops, 422, json=bad)
    assert refused["response"].startswith("inference_amount")
    listed = await call(
        client, "/server/superadmin-get-organization-purchases", ops, json={"org_id": created["id"]}
    )
    assert [p["inference_amount"] for p in listed["response"]] == [500_000]
    names = [
        o["name"]
        for o in (await call(client, "/server/superadmin-get-all-organizations", ops))["response"]
    ]
    assert sorted(names) == ["Acme", "Initech"]
    for path in ("superadmin-add-organization", "superadmin-get-all-organizations"):
        await call(
            client,
            f"/server/{path}",
            org.admin.key,
            403,
            json={"name": "Nope"} if "add" in path else {},
        )
    # Operators act in an organization they name.
    stats = await call(client, "/user/admin-get-token-stats", ops, json={"org_id": created["id"]})
    assert stats["response"]["inference"]["capacity"] == 500_000
    await call(client, "/user/admin-get-token-stats", ops, 422)


async def test_member_usage_left_counts_the_user_and_the_organization(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    await api.use(org.member.email, 150_000)
    left = await call(client, "/server/count-monthly-tokens-left-with-org", org.member.key)
    assert (left["response"], left["training"]) == (50_000, 10_000)


async def test_train_with_file_meters_its_text_and_refuses_other_files(
    client: httpx.AsyncClient, org: Org, api: Api
) -> None:
    member = {"x-access-tokens": org.member.key}
    text = "Words of a document, " * 20
    tokens = (await call(client, "/server/tokenizer", org.member.key, json={"content": text}))[
        "response"
    ]
    sent = await client.post(
        "/server/train-with-file",
        headers=member,
        files={"file": ("notes.txt", text.encode())},
        data={"dataset": "docs"},
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["tokens"] == tokens
    binary = await client.post(
        "/server/train-with-file", headers=member, files={"file": ("x.bin", b"\xff\xfe\x00")}
    )
    assert binary.status_code == 422
    assert binary.json()["code"] == "not_served"
    empty = await call(client, "/server/train", org.member.key, 422, json={"content": "   "})
    assert empty["code"] == "empty_document"
    assert (await get_user(api, org.member.id))["training"]["used"] == tokens


@pytest.mark.parametrize("field", ["tokens", "id"])
async def test_allowance_amounts_and_user_ids_are_checked(
    client: httpx.AsyncClient, org: Org, field: str
) -> None:
    body: dict[str, Any] = {"id": org.member.id, "tokens": 300_000}
    body[field] = 2.5 if field == "tokens" else "nobody"
    expect = 422 if field == "tokens" else 404
    refused = await call(client, "/user/admin-update-user-tokens", org.admin.key, expect, json=body)
    assert refused["code"] == ("invalid_request" if field == "tokens" else "user_not_found")
