"""Distributing the balance through the API: preview, then one atomic apply of both kinds."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.asksage.conftest import personal_key
from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, journal, last_entry_id
from tests.test_route_matrix import Req, send, session_of
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.distribution import service as distribution_service
from tokenadmin.tokens import MAX_AMOUNT


def _path(org: str, preview: bool = False) -> str:
    return f"/v1/organizations/{org}/distribution" + ("/preview" if preview else "")


async def _preview(api: Api, org: str, body: dict[str, Any], expect: int = 200) -> Any:
    return await api.post(_path(org, preview=True), body, expect=expect)


async def _apply(
    api: Api, org: str, body: dict[str, Any], *, key: str | None = None
) -> httpx.Response:
    return await api.call("POST", _path(org), json=body, idempotency_key=key)


async def _org_of_three(api: Api, **policy: Any) -> tuple[str, list[dict[str, Any]]]:
    """1,000,000 inference and 100,000 training tokens; three users with the minimum of
    200,000 Max Tokens, so a balance of 400,000 and 100,000."""
    org = await funded_org(api, 1_000_000, 100_000, **policy)
    users = [await api.user(org, f"{name}@example.com") for name in ("ana", "bo", "cy")]
    return org, users


async def _state(api: Api, org: str, users: list[dict[str, Any]]) -> tuple[Any, ...]:
    stored = [await get_user(api, u["id"]) for u in users]
    return (
        await api.balance(org),
        [(u["max_tokens"], u["max_train_tokens"], u["version"]) for u in stored],
        len(await journal(api, org)),
    )


async def test_an_equal_split_leaves_the_remainder_in_the_balance_and_a_preview_saves_nothing(
    api: Api,
) -> None:
    org, users = await _org_of_three(api)
    before = await _state(api, org, users)

    preview = await _preview(api, org, {"inference": {"method": "equal"}})

    inference = preview["kinds"]["inference"]
    assert (inference["per_user"], inference["added"]) == (133_333, 399_999)
    assert (inference["balance_before"], inference["balance_after"]) == (400_000, 1)
    assert sorted((r["email"], r["before"], r["after"]) for r in inference["rows"]) == [
        ("ana@example.com", 200_000, 333_333),
        ("bo@example.com", 200_000, 333_333),
        ("cy@example.com", 200_000, 333_333),
    ]
    assert (preview["applied"], preview["accepted"], preview["users"]) == (False, True, 3)
    assert preview["refused"] == []
    assert set(preview["kinds"]) == {"inference"}
    assert len(preview["preview_token"]) == 64
    assert await _state(api, org, users) == before


async def test_fixed_and_percent_with_a_minimum_and_a_maximum_apply_both_kinds_in_one_change(
    api: Api,
) -> None:
    org, users = await _org_of_three(api)
    body = {
        "inference": {"method": "percent", "percent": 50, "maximum": 50_000},
        "training": {"method": "fixed", "amount": 10_000, "minimum": 20_000},
        "reason": "Q3",
    }
    preview = await _preview(api, org, body)
    assert preview["kinds"]["inference"]["per_user"] == 50_000  # 50% of 400,000 / 3, capped
    assert preview["kinds"]["training"]["per_user"] == 20_000  # 10,000, raised to the minimum
    mark = await last_entry_id(api, org)

    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})

    assert response.status_code == 200, response.text
    applied = response.json()
    assert applied["applied"]
    assert applied["preview_token"] == preview["preview_token"]
    assert applied["kinds"] == preview["kinds"]
    for user in users:
        stored = await get_user(api, user["id"])
        assert (stored["max_tokens"], stored["max_train_tokens"]) == (250_000, 20_000)
        assert stored["version"] == user["version"] + 1  # one change of both kinds
    balance = await api.balance(org)
    assert (balance["inference"]["balance"], balance["training"]["balance"]) == (250_000, 40_000)
    entries = await entries_since(api, org, mark)
    assert sorted((e["kind"], e["allowance_delta"]) for e in entries) == sorted(
        [("inference", 50_000)] * 3 + [("training", 20_000)] * 3
    )
    reasons = {e["reason"] for e in entries}
    assert reasons == {"Distribution (inference: percent, training: fixed): Q3"}


async def _org_with_expiring_purchases(api: Api) -> tuple[str, list[dict[str, Any]], Any, Any]:
    """Besides the 1,000,000 / 100,000 of `_org_of_three` (now is 15 Mar 2026): A, 500,000
    inference and 50,000 training expiring on 31 Mar (before the period ends); B, 300,000
    inference expiring on 10 Apr (within 30 days); and 1,000,000 inference expiring in
    September, not soon. Capacity 2,800,000 / 150,000; allocated 600,000 / 0."""
    org, users = await _org_of_three(api)
    a = await api.purchase(org, 500_000, 50_000, expires_at="2026-03-31T12:00:00Z")
    b = await api.purchase(org, 300_000, expires_at="2026-04-10T00:00:00Z")
    await api.purchase(org, 1_000_000, expires_at="2026-09-01T00:00:00Z")
    return org, users, a, b


async def test_the_purchases_expiring_soon_that_would_leave_it_over_allocated_are_named(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    org, _users, a, b = await _org_with_expiring_purchases(api)
    admin = await api.user(org, "ada@example.com", role="admin")  # allocated 800,000 / 0
    body = {
        "inference": {"method": "fixed", "amount": 400_000},  # allocated 2,400,000
        "training": {"method": "fixed", "amount": 10_000},  # allocated 40,000
    }

    preview = await _preview(api, org, body)

    assert preview["accepted"]
    fields = ("purchase_id", "kind", "amount", "capacity_after", "allocated_after", "over")
    named = [(*(e[f] for f in fields), e["expires_at"]) for e in preview["expiring"]]
    # Without A, 2,300,000 of capacity; without A and B, 2,000,000. Training keeps 100,000
    # of capacity for 40,000 allocated: A is not named for it.
    assert named == [
        (a["id"], "inference", 500_000, 2_300_000, 2_400_000, 100_000, "2026-03-31T12:00:00Z"),
        (b["id"], "inference", 300_000, 2_000_000, 2_400_000, 400_000, "2026-04-10T00:00:00Z"),
    ]
    assert preview["expiring"][0]["message"] == (
        "The purchase of 500,000 inference tokens expiring on 31 Mar 2026 funds part of this;"
        " after it expires the organization would be 100,000 over."
    )
    # The Ask Sage API's preview answers the same.
    key = await personal_key(db, clock, admin["id"])
    asksage = await client.post(
        "/server/admin-token-distribution-preview", headers={"x-access-tokens": key}, json=body
    )
    assert asksage.json()["response"]["expiring"] == preview["expiring"]
    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})
    assert response.status_code == 200, response.text
    assert response.json()["expiring"] == preview["expiring"]


async def test_no_purchase_is_named_when_none_expires_soon_or_its_expiry_leaves_enough(
    api: Api,
) -> None:
    org, (ana, _bo, _cy) = await _org_of_three(api)
    await api.purchase(org, 1_000_000, 100_000, expires_at="2026-09-01T00:00:00Z")
    everything = {"inference": {"method": "equal"}, "training": {"method": "equal"}}
    assert (await _preview(api, org, everything))["expiring"] == []  # none expires soon

    await api.purchase(org, 500_000, 50_000, expires_at="2026-03-31T12:00:00Z")
    within = {"inference": {"method": "fixed", "amount": 200_000}}  # 1,200,000 ≤ 2,000,000
    assert (await _preview(api, org, within))["expiring"] == []

    # Inference would be over once it expires, but a training distribution depends on no
    # inference tokens, and training keeps enough.
    await api.allowances(org, {"user": ana["id"], "max_tokens": 1_700_000}, expect=200)
    training = {"training": {"method": "fixed", "amount": 10_000}}
    assert (await _preview(api, org, training))["expiring"] == []
    one_more = {"inference": {"method": "fixed", "amount": 1}}
    assert [e["over"] for e in (await _preview(api, org, one_more))["expiring"]] == [100_003]


async def test_only_the_chosen_users_by_id_or_email_get_the_amount(api: Api) -> None:
    org, (ana, bo, cy) = await _org_of_three(api)
    body = {"inference": {"method": "equal"}, "users": [ana["id"], "BO@example.com"]}

    response = await _apply(api, org, body)

    assert response.status_code == 200, response.text
    assert response.json()["users"] == 2
    assert [(await get_user(api, u["id"]))["max_tokens"] for u in (ana, bo, cy)] == [
        400_000,
        400_000,
        200_000,
    ]


async def test_an_unknown_user_is_a_refused_row_and_nothing_is_applied(api: Api) -> None:
    org, users = await _org_of_three(api)
    before = await _state(api, org, users)
    body = {"inference": {"method": "equal"}, "users": ["ana@example.com", "nobody@example.com"]}

    preview = await _preview(api, org, body)
    assert not preview["accepted"]
    assert [(r["user"], r["code"]) for r in preview["refused"]] == [
        ("nobody@example.com", "user_not_found")
    ]
    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})

    details = error_of(response, 422, "allowance_change_refused")
    assert [r["code"] for r in details["refused"]] == ["user_not_found"]
    assert await _state(api, org, users) == before


async def test_when_one_kind_is_refused_neither_kind_is_written(api: Api) -> None:
    org, users = await _org_of_three(api)
    before = await _state(api, org, users)
    body = {
        "inference": {"method": "fixed", "amount": 1_000},
        "training": {"method": "fixed", "amount": 50_000},  # 150,000 of a 100,000 balance
    }
    preview = await _preview(api, org, body)
    assert not preview["accepted"]
    assert {(r["code"], r["kind"]) for r in preview["refused"]} == {("exceeds_balance", "training")}

    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})

    details = error_of(response, 422, "allowance_change_refused")
    assert {(r["code"], r["kind"]) for r in details["refused"]} == {("exceeds_balance", "training")}
    assert await _state(api, org, users) == before


async def test_a_stale_preview_token_is_refused_after_a_concurrent_allowance_change(
    api: Api,
) -> None:
    org, users = await _org_of_three(api)
    body = {"inference": {"method": "fixed", "amount": 10_000}}
    preview = await _preview(api, org, body)
    await api.allowances(org, {"user": users[1]["id"], "max_tokens": 210_000}, expect=200)
    before = await _state(api, org, users)

    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})

    error_of(response, 409, "preview_stale")
    assert "Preview again" in response.json()["error"]["message"]
    assert await _state(api, org, users) == before
    again = await _preview(api, org, body)
    assert again["preview_token"] != preview["preview_token"]
    response = await _apply(api, org, {**body, "preview_token": again["preview_token"]})
    assert response.status_code == 200, response.text


async def test_a_purchase_since_the_preview_makes_its_token_stale(api: Api) -> None:
    org, _users = await _org_of_three(api)
    body = {"inference": {"method": "equal"}}
    preview = await _preview(api, org, body)
    await api.purchase(org, 3_000)
    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})
    error_of(response, 409, "preview_stale")


async def test_apply_without_a_token_applies_what_it_computes_and_answers_it(api: Api) -> None:
    org, _users = await _org_of_three(api)
    body = {"inference": {"method": "equal"}}
    expected = await _preview(api, org, body)
    response = await _apply(api, org, body)
    assert response.status_code == 200, response.text
    assert response.json()["preview_token"] == expected["preview_token"]
    assert (await api.balance(org))["inference"]["balance"] == 1


async def test_a_replay_with_the_same_idempotency_key_applies_once(api: Api) -> None:
    org, users = await _org_of_three(api)
    body = {"training": {"method": "fixed", "amount": 1_000}}
    first = await _apply(api, org, body, key="distribute-1")
    second = await _apply(api, org, body, key="distribute-1")
    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.json() == first.json()
    assert (await get_user(api, users[0]["id"]))["max_train_tokens"] == 1_000
    assert (await api.balance(org))["training"]["balance"] == 97_000


async def test_a_distribution_past_2_to_the_53_is_refused_and_changes_nothing(api: Api) -> None:
    org = await funded_org(api, MAX_AMOUNT, 0, overallocation=True)
    big = await api.user(org, "big@example.com")
    await api.allowances(org, {"user": big["id"], "max_tokens": MAX_AMOUNT - 500}, expect=200)
    before = await _state(api, org, [big])
    body = {"inference": {"method": "fixed", "amount": 1_000}, "users": [big["email"]]}

    preview = await _preview(api, org, body)
    assert not preview["accepted"]
    assert {r["code"] for r in preview["refused"]} == {"amount_too_large"}
    response = await _apply(api, org, {**body, "preview_token": preview["preview_token"]})

    details = error_of(response, 422, "allowance_change_refused")
    assert {r["email"] for r in details["refused"]} == {"big@example.com"}
    assert await _state(api, org, [big]) == before
    assert (await get_user(api, big["id"]))["max_tokens"] == MAX_AMOUNT - 500


async def test_deactivated_users_are_left_out_of_all_and_refused_when_named(api: Api) -> None:
    org, (_ana, _bo, cy) = await _org_of_three(api)
    await api.post(f"/v1/users/{cy['id']}/deactivate", expect=200)
    preview = await _preview(api, org, {"inference": {"method": "equal"}})
    assert preview["users"] == 2
    assert preview["kinds"]["inference"]["per_user"] == 300_000  # 600,000 / 2
    named = await _preview(
        api, org, {"inference": {"method": "fixed", "amount": 5}, "users": [cy["email"]]}
    )
    assert [r["code"] for r in named["refused"]] == ["user_deactivated"]


async def test_no_active_user_is_refused(api: Api) -> None:
    org = await funded_org(api)
    response = await api.call(
        "POST", _path(org, preview=True), json={"inference": {"method": "equal"}}
    )
    error_of(response, 422, "no_active_users")


async def test_inconsistent_rules_are_refused_before_anything_is_read(api: Api) -> None:
    org, _users = await _org_of_three(api)
    for rule in (
        {"method": "fixed"},
        {"method": "equal", "amount": 5},
        {"method": "percent"},
        {"method": "percent", "percent": 101},
        {"method": "equal", "minimum": 10, "maximum": 5},
    ):
        response = await api.call("POST", _path(org, preview=True), json={"inference": rule})
        assert response.status_code == 422, (rule, response.text)
    response = await api.call("POST", _path(org, preview=True), json={"reason": "none"})
    error_of(response, 422, "invalid_request")
    response = await _apply(api, org, {"inference": {"method": "equal"}, "preview_token": "ab"})
    error_of(response, 422, "invalid_request")


async def test_only_an_admin_of_the_organization_may_distribute(api: Api) -> None:
    org, _users = await _org_of_three(api)
    other = await funded_org(api)
    body = {"inference": {"method": "equal"}}
    reader = api.as_key(await api.key(org, "read"))
    stranger = api.as_key(await api.key(other, "admin"))
    error_of(await reader.call("POST", _path(org), json=body), 403, "forbidden")
    error_of(await stranger.call("POST", _path(org, preview=True), json=body), 404, "not_found")
    admin = api.as_key(await api.key(org, "admin"))
    assert (await admin.call("POST", _path(org), json=body)).status_code == 200


async def test_the_dashboard_applies_both_kinds_by_the_service_and_refuses_a_stale_preview(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    org, (ana, bo, _cy) = await _org_of_three(api)
    admin = await api.user(org, "ada@example.com", role="admin")
    caller = await session_of(db, clock, user_id=admin["id"])
    page = f"/orgs/{org}/distribute"
    form: dict[str, str | list[str]] = {
        "inference_method": "fixed",
        "inference_amount": "2K",
        "training_method": "fixed",
        "training_amount": "1K",
        "scope": "selected",
        "users": [ana["id"], bo["id"]],
    }

    preview = await send(client, Req("POST", page, form=form | {"action": "preview"}), caller)
    assert preview.status_code == 200, preview.text
    digest = re.search(r'name="digest" value="([0-9a-f]{64})"', preview.text)
    assert digest
    rules = {"inference": {"method": "fixed", "amount": 2_000}}
    rules |= {"training": {"method": "fixed", "amount": 1_000}}
    api_preview = await _preview(api, org, rules | {"users": [ana["id"], bo["id"]]})
    assert digest.group(1) == api_preview["preview_token"]  # the same preview, the same token

    await api.allowances(org, {"user": bo["id"], "max_train_tokens": 5}, expect=200)
    apply = form | {"action": "apply", "digest": digest.group(1)}
    stale = await send(client, Req("POST", page, form=apply), caller)
    assert stale.status_code == 200, stale.text
    assert "changed since your preview; nothing was saved" in stale.text
    assert (await get_user(api, ana["id"]))["max_train_tokens"] == 0

    fresh = re.search(r'name="digest" value="([0-9a-f]{64})"', stale.text)
    assert fresh
    applied = await send(client, Req("POST", page, form=apply | {"digest": fresh.group(1)}), caller)
    assert applied.status_code == 303, applied.text
    assert applied.headers["location"] == f"{page}?done=2&inference=2000&training=1000"
    stored = [await get_user(api, u["id"]) for u in (ana, bo)]
    assert [(u["max_tokens"], u["max_train_tokens"]) for u in stored] == [
        (202_000, 1_000),
        (202_000, 1_005),
    ]


async def test_the_dashboard_refuses_a_form_that_leaves_both_kinds_alone_or_is_mistyped(
    api: Api, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    org, users = await _org_of_three(api)
    admin = await api.user(org, "ada@example.com", role="admin")
    caller = await session_of(db, clock, user_id=admin["id"])
    before = await _state(api, org, users)
    page = f"/orgs/{org}/distribute"
    alone: dict[str, str | list[str]] = {"inference_method": "none", "training_method": "none"}
    mistyped: dict[str, str | list[str]] = {"training_method": "fixed", "training_amount": "lots"}

    refused = await send(client, Req("POST", page, form=alone | {"action": "apply"}), caller)
    wrong = await send(client, Req("POST", page, form=mistyped | {"action": "preview"}), caller)

    assert (refused.status_code, wrong.status_code) == (422, 422)
    assert "Nothing to preview yet" in refused.text
    assert "Choose how to distribute Max Tokens, Max Train Tokens or both." in refused.text
    # The problem is listed where the browser lands (#preview), linked to its field.
    assert '<a href="#training-amount">Max Train Tokens, fixed amount per user</a>' in wrong.text
    assert 'id="training-amount"' in wrong.text
    assert await _state(api, org, users) == before


async def test_all_users_beyond_what_one_distribution_covers_is_refused_not_cut_short(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, users = await _org_of_three(api)
    before = await _state(api, org, users)
    monkeypatch.setattr(distribution_service, "MAX_USERS", 2)

    refused = await _apply(api, org, {"inference": {"method": "fixed", "amount": 1_000}})

    details = error_of(refused, 422, "too_many_users")
    assert details == {"active_users": 3, "maximum": 2}
    assert await _state(api, org, users) == before
    # Naming the users is the way.
    named = {"inference": {"method": "fixed", "amount": 1_000}, "users": [users[0]["email"]]}
    assert (await _apply(api, org, named)).status_code == 200
