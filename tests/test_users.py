"""Users: adding, profile changes, status, and the user table (search, filter, sort, pages)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import entries_since, error_of, get_user, journal, last_entry_id, utc
from tokenadmin.clock import FakeClock


async def _table(api: Api, org: str, **params: Any) -> list[str]:
    page = await api.get(f"/v1/organizations/{org}/users", params=params)
    return [u["email"] for u in page["users"]]


async def test_a_new_user_is_active_with_the_minimums_and_version_1(api: Api) -> None:
    org = await funded_org(api)
    user = await api.user(org, "Ana.Lima@Example.com", role="admin")

    assert user["email"] == "ana.lima@example.com"
    assert (user["role"], user["status"], user["version"]) == ("admin", "active", 1)
    assert user["inference"] == {"used": 0, "reserved": 0, "remaining": 200_000}
    assert user["created_at"] == "2026-03-15T12:00:00Z"
    assert user["last_activity_at"] is None
    assert await get_user(api, user["id"]) == user


async def test_a_new_user_may_get_more_than_the_minimum(api: Api) -> None:
    org = await funded_org(api)
    user = await api.user(org, max_tokens=350_000, max_train_tokens=25_000)
    assert (user["max_tokens"], user["max_train_tokens"]) == (350_000, 25_000)
    balance = await api.balance(org)
    assert (balance["inference"]["allocated"], balance["training"]["allocated"]) == (
        350_000,
        25_000,
    )


async def test_an_email_is_taken_once_whatever_its_case(api: Api) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com")
    mark = await last_entry_id(api, org)

    response = await api.call(
        "POST", f"/v1/organizations/{org}/users", json={"email": "ANA@example.com", "name": "A"}
    )

    details = error_of(response, 409, "email_taken")
    assert details["email"] == "ANA@example.com"
    assert await last_entry_id(api, org) == mark
    assert (await api.balance(org))["inference"]["allocated"] == 200_000


@pytest.mark.parametrize(
    "body",
    [
        {"email": "not-an-email", "name": "X"},
        {"email": "x@example.com", "name": ""},
        {"email": "x@example.com"},
        {"email": "x@example.com", "name": "X", "role": "owner"},
        {"email": "x@example.com", "name": "X", "password": "short"},
    ],
    ids=["bad-email", "empty-name", "no-name", "unknown-role", "short-password"],
)
async def test_a_user_needs_a_valid_email_name_and_role(api: Api, body: dict[str, Any]) -> None:
    org = await funded_org(api)
    mark = await last_entry_id(api, org)
    error_of(
        await api.call("POST", f"/v1/organizations/{org}/users", json=body), 422, "invalid_request"
    )
    assert await last_entry_id(api, org) == mark


async def test_name_and_role_changes_are_journaled_and_bump_the_version(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    mark = await last_entry_id(api, org)

    user = await api.patch(
        f"/v1/users/{ana['id']}",
        {"name": "Ana Lima", "role": "admin", "reason": "lead"},
        expect=200,
    )

    assert (user["name"], user["role"], user["version"]) == ("Ana Lima", "admin", 2)
    [entry] = await entries_since(api, org, mark)
    assert (entry["action"], entry["kind"], entry["reason"]) == ("user_changed", None, "lead")
    assert entry["details"] == {
        "name": ["Ana", "Ana Lima"],
        "role": ["member", "admin"],
        "version": 2,
    }
    same = await api.patch(f"/v1/users/{ana['id']}", {"name": "Ana Lima"}, expect=200)
    assert same["version"] == 2
    assert await last_entry_id(api, org) == entry["id"]


async def test_deactivating_or_reactivating_twice_is_refused(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    error_of(await api.call("POST", f"/v1/users/{ana['id']}/reactivate"), 409, "already_active")
    first = await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    assert first["version"] == 2
    mark = await last_entry_id(api, org)
    error_of(
        await api.call("POST", f"/v1/users/{ana['id']}/deactivate"), 409, "already_deactivated"
    )
    assert await last_entry_id(api, org) == mark


async def test_a_deactivated_users_allowance_cannot_be_changed(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    response = await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 300_000})
    error_of(response, 409, "user_deactivated")
    renamed = await api.patch(f"/v1/users/{ana['id']}", {"name": "Former"}, expect=200)
    assert (renamed["name"], renamed["max_tokens"]) == ("Former", 0)


async def test_the_user_table_pages_and_counts(api: Api) -> None:
    org = await funded_org(api, inference=5_000_000)
    for letter in "edcba":
        await api.user(org, f"{letter}@example.com")

    first = await api.get(f"/v1/organizations/{org}/users", params={"limit": 2})
    second = await api.get(f"/v1/organizations/{org}/users", params={"limit": 2, "offset": 2})
    last = await api.get(f"/v1/organizations/{org}/users", params={"limit": 2, "offset": 4})

    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    emails = [u["email"] for page in (first, second, last) for u in page["users"]]
    assert emails == [f"{c}@example.com" for c in "abcde"]
    error_of(
        await api.call("GET", f"/v1/organizations/{org}/users", params={"limit": 501}),
        422,
        "invalid_request",
    )


async def test_the_user_table_searches_names_and_emails(api: Api) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com", name="Ana Lima")
    await api.user(org, "bo@corp.example", name="Bo Canaan")
    await api.user(org, "cy@example.com", name="Cy")
    assert await _table(api, org, search="ANA") == ["ana@example.com", "bo@corp.example"]
    assert await _table(api, org, search="corp") == ["bo@corp.example"]
    assert await _table(api, org, search="nobody") == []


async def test_the_user_table_filters_by_status_and_role(api: Api) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com", role="admin")
    bo = await api.user(org, "bo@example.com")
    await api.user(org, "cy@example.com")
    await api.post(f"/v1/users/{bo['id']}/deactivate", expect=200)

    assert await _table(api, org, status="deactivated") == ["bo@example.com"]
    assert await _table(api, org, status="active") == ["ana@example.com", "cy@example.com"]
    assert await _table(api, org, role="admin") == ["ana@example.com"]
    assert await _table(api, org, role="member", status="active") == ["cy@example.com"]


async def test_the_user_table_sorts_by_allowance_and_by_this_periods_usage(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, inference=5_000_000)
    ana = await api.user(org, "ana@example.com", max_tokens=300_000)
    bo = await api.user(org, "bo@example.com", max_tokens=250_000)
    await api.user(org, "cy@example.com", max_tokens=400_000)
    await api.use(ana["id"], 180_000, expect=200)
    await api.use(bo["id"], 5_000, expect=200)

    assert await _table(api, org, sort="max_tokens", order="desc") == [
        "cy@example.com",
        "ana@example.com",
        "bo@example.com",
    ]
    assert (await _table(api, org, sort="inference_used", order="desc"))[0] == "ana@example.com"

    clock.set(utc("2026-04-02 00:00"))
    await api.use(bo["id"], 1_000, expect=200)

    assert (await _table(api, org, sort="inference_used", order="desc"))[0] == "bo@example.com"
    assert (await _table(api, org, sort="inference_used"))[-1] == "bo@example.com"
    page = await api.get(f"/v1/organizations/{org}/users", params={"sort": "email"})
    used = {u["email"]: u["inference"]["used"] for u in page["users"]}
    assert used == {"ana@example.com": 0, "bo@example.com": 1_000, "cy@example.com": 0}


async def test_the_user_table_finds_users_near_their_limit(api: Api) -> None:
    org = await funded_org(api, min_training=1_000)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    cy = await api.user(org, "cy@example.com")
    await api.use(ana["id"], 170_000, expect=200)
    await api.post(
        "/v1/reservations", {"user": bo["id"], "kind": "inference", "tokens": 160_000}, expect=201
    )
    await api.use(cy["id"], 900, "training", expect=200)
    assert await _table(api, org, near_limit=0.8) == [
        "ana@example.com",
        "bo@example.com",
        "cy@example.com",
    ]
    assert await _table(api, org, near_limit=0.85) == ["ana@example.com", "cy@example.com"]
    assert await _table(api, org, near_limit=0.95) == []


async def test_a_user_without_a_training_allowance_is_not_near_a_limit(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    await api.user(org, "bo@example.com")
    await api.use(ana["id"], 170_000, expect=200)
    assert await _table(api, org, near_limit=0.8) == ["ana@example.com"]


async def test_last_activity_is_the_time_of_the_last_usage(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    clock.set(utc("2026-03-16 08:30"))
    await api.use(ana["id"], 1, expect=200)
    assert (await get_user(api, ana["id"]))["last_activity_at"] == "2026-03-16T08:30:00Z"


async def test_sorting_by_last_activity_puts_the_most_recent_first_on_every_database(
    api: Api, clock: FakeClock, database_url: str, request: pytest.FixtureRequest
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")
    await api.user(org, "cy@example.com")
    clock.set(utc("2026-03-16 08:30"))
    await api.use(bo["id"], 1, expect=200)
    clock.set(utc("2026-03-17 08:30"))
    await api.use(ana["id"], 1, expect=200)

    newest_first = await _table(api, org, sort="last_activity_at", order="desc")
    oldest_first = await _table(api, org, sort="last_activity_at", order="asc")

    assert newest_first == ["ana@example.com", "bo@example.com", "cy@example.com"]
    # Never active is the least recent activity of all.
    assert oldest_first == ["cy@example.com", "bo@example.com", "ana@example.com"]


async def test_usage_history_per_day_of_this_period(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api, time_zone="America/New_York")
    ana = await api.user(org, max_train_tokens=50_000)
    clock.set(utc("2026-03-16 03:00"))  # 23:00 on 15 March in New York
    await api.use(ana["id"], 100, expect=200)
    clock.set(utc("2026-03-16 05:00"))  # 01:00 on 16 March
    await api.use(ana["id"], 200, expect=200)
    await api.use(ana["id"], 50, "training", expect=200)

    history = await api.get(f"/v1/users/{ana['id']}/usage", params={"granularity": "day"})

    assert [(p["start"], p["inference"], p["training"]) for p in history["points"]] == [
        ("2026-03-15T00:00:00-04:00", 100, 0),
        ("2026-03-16T00:00:00-04:00", 200, 50),
    ]
    assert len(await journal(api, org, action="usage")) == 3
