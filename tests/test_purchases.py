"""Purchases: capacity, expiry and the expiring-soon list (platform operators only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.helpers import Api
from tests.scenarios import error_of, journal, last_entry_id, org_api, run_sweeper, utc
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _org(api: Api, **policy: Any) -> str:
    org_id: str = (await api.organization(**policy))["id"]
    return org_id


async def test_a_purchase_records_its_amounts_payer_and_note(api: Api) -> None:
    org = await _org(api)
    purchase = await api.purchase(
        org, 1_000_000, 50_000, payer="Finance", note="PO 4711", purchased_on="2026-03-01"
    )

    assert (purchase["inference_amount"], purchase["training_amount"]) == (1_000_000, 50_000)
    assert (purchase["payer"], purchase["note"], purchase["purchased_on"]) == (
        "Finance",
        "PO 4711",
        "2026-03-01",
    )
    assert (purchase["expires_at"], purchase["expired"]) == (None, False)
    balance = await api.balance(org)
    assert (balance["inference"]["capacity"], balance["training"]["capacity"]) == (
        1_000_000,
        50_000,
    )
    entries = await journal(api, org, action="purchase")
    assert [(e["kind"], e["capacity_delta"], e["purchase_id"], e["reason"]) for e in entries] == [
        ("inference", 1_000_000, purchase["id"], "PO 4711"),
        ("training", 50_000, purchase["id"], "PO 4711"),
    ]
    assert entries[0]["details"] == {"payer": "Finance"}


async def test_the_purchase_date_defaults_to_today_in_the_organizations_zone(api: Api) -> None:
    org = await _org(api, time_zone="Pacific/Kiritimati")  # UTC+14: already 16 March
    purchase = await api.purchase(org, 1_000)
    assert purchase["purchased_on"] == "2026-03-16"


async def test_capacity_counts_only_purchases_that_have_not_expired(
    api: Api, clock: FakeClock
) -> None:
    org = await _org(api)
    await api.purchase(org, 1_000_000, 10_000)
    expiring = await api.purchase(org, 500_000, 20_000, expires_at="2026-03-20T00:00:00Z")
    assert (await api.balance(org))["inference"]["capacity"] == 1_500_000

    clock.set(utc("2026-03-20 00:00"))  # the expiry is exclusive: gone at that instant

    balance = await api.balance(org)
    assert (balance["inference"]["capacity"], balance["training"]["capacity"]) == (
        1_000_000,
        10_000,
    )
    purchases = {p["id"]: p for p in await api.get(f"/v1/organizations/{org}/purchases")}
    assert purchases[expiring["id"]]["expired"] is True
    assert len(purchases) == 2


async def test_an_expiry_writes_purchase_expired_entries_and_shows_the_shortfall(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org = await _org(api)
    await api.purchase(org, 300_000)
    expiring = await api.purchase(org, 300_000, 5_000, expires_at="2026-03-20T00:00:00Z")
    await api.user(org, max_tokens=500_000)
    clock.set(utc("2026-03-21 08:00"))

    report = await run_sweeper(db, clock)

    assert report.organizations_updated == 1
    entries = await journal(api, org, action="purchase_expired")
    assert [
        (e["kind"], e["amount"], e["capacity_delta"], e["capacity_after"]) for e in entries
    ] == [
        ("inference", 300_000, -300_000, 300_000),
        ("training", 5_000, -5_000, 0),
    ]
    assert {(e["purchase_id"], e["actor"]) for e in entries} == {(expiring["id"], "system")}
    balance = await api.balance(org)
    assert balance["inference"] == {
        "capacity": 300_000,
        "allocated": 500_000,
        "balance": -200_000,
        "shortfall": 200_000,
        "used": 0,
        "reserved": 0,
    }
    assert balance["over_allocated"] is True
    assert (await run_sweeper(db, clock)).organizations_updated == 0
    assert len(await journal(api, org, action="purchase_expired")) == 2


async def test_a_new_purchase_resolves_a_shortfall(api: Api, clock: FakeClock) -> None:
    org = await _org(api)
    await api.purchase(org, 300_000, expires_at="2026-03-20T00:00:00Z")
    ana = await api.user(org)
    clock.set(utc("2026-03-21 00:00"))
    assert (await api.balance(org))["over_allocated"] is True
    error_of(
        await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 200_001}),
        422,
        "exceeds_balance",
    )

    await api.purchase(org, 300_000)

    balance = await api.balance(org)
    assert (balance["over_allocated"], balance["inference"]["balance"]) == (False, 100_000)
    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 300_000}, expect=200)


async def test_an_expiry_without_an_offset_is_read_in_the_organizations_zone(api: Api) -> None:
    org = await _org(api, time_zone="Europe/Berlin")
    by_date = await api.purchase(org, 1_000, expires_at="2026-04-01")
    by_time = await api.purchase(org, 1_000, expires_at="2026-04-01T00:00:00")
    with_offset = await api.purchase(org, 1_000, expires_at="2026-04-01T00:00:00Z")
    assert instant(by_date["expires_at"]) == utc("2026-03-31 22:00")
    assert instant(by_time["expires_at"]) == utc("2026-03-31 22:00")
    assert instant(with_offset["expires_at"]) == utc("2026-04-01 00:00")


async def test_a_time_written_as_a_number_is_refused_not_read_as_seconds_since_1970(
    api: Api,
) -> None:
    """Pydantic reads "1800000000" as 2027-01-15 and "20270101" as a day of August 1970; a
    client that meant milliseconds, or a date, would get an expiry decades off."""
    org = await _org(api)
    purchase = await api.purchase(org, 1_000, expires_at="2026-06-01T00:00:00Z")
    mark = await last_entry_id(api, org)
    purchases = f"/v1/organizations/{org}/purchases"
    for field, value in [
        ("expires_at", "1800000000"),
        ("expires_at", "1800000000000"),
        ("expires_at", "20270101"),
        ("expires_at", 1800000000),
        ("expires_at", 1.8e9),
        ("purchased_on", "1799971200"),
        ("purchased_on", 1799971200),
    ]:
        response = await api.call("POST", purchases, json={"inference_amount": 1_000, field: value})
        error = error_of(response, 422, "invalid_request")
        assert error["errors"][0]["field"] == field, (value, error)
        message = response.json()["error"]["message"]
        assert message.startswith(f"{field}: "), (value, message)
        assert "ISO 8601" in message, (value, message)
        if field == "expires_at":
            moved = await api.call("PATCH", f"{purchases}/{purchase['id']}", json={field: value})
            error_of(moved, 422, "invalid_request")
    assert await last_entry_id(api, org) == mark
    listed = await api.get(purchases)
    assert [instant(p["expires_at"]) for p in listed] == [utc("2026-06-01 00:00")]


async def test_an_expiry_must_be_in_the_future(api: Api) -> None:
    org = await _org(api)
    mark = await last_entry_id(api, org)
    response = await api.call(
        "POST",
        f"/v1/organizations/{org}/purchases",
        json={"inference_amount": 1_000, "expires_at": "2026-03-15T12:00:00Z"},
    )
    error_of(response, 422, "invalid_expiry")
    assert await last_entry_id(api, org) == mark


async def test_moving_an_expiry_later_keeps_the_purchase_counting(
    api: Api, clock: FakeClock
) -> None:
    org = await _org(api)
    purchase = await api.purchase(org, 500_000, expires_at="2026-03-20T00:00:00Z")
    path = f"/v1/organizations/{org}/purchases/{purchase['id']}"

    moved = await api.patch(path, {"expires_at": "2026-06-30T00:00:00Z"}, expect=200)

    assert instant(moved["expires_at"]) == utc("2026-06-30 00:00")
    [entry] = await journal(api, org, action="purchase_expiry_changed")
    assert entry["purchase_id"] == purchase["id"]
    assert [instant(entry["details"][k]) for k in ("before", "after")] == [
        utc("2026-03-20 00:00"),
        utc("2026-06-30 00:00"),
    ]
    clock.set(utc("2026-04-15 00:00"))
    assert (await api.balance(org))["inference"]["capacity"] == 500_000
    clock.set(utc("2026-06-30 00:00"))
    assert (await api.balance(org))["inference"]["capacity"] == 0


async def test_clearing_an_expiry_makes_the_purchase_permanent(api: Api, clock: FakeClock) -> None:
    org = await _org(api)
    purchase = await api.purchase(org, 500_000, expires_at="2026-03-20T00:00:00Z")
    path = f"/v1/organizations/{org}/purchases/{purchase['id']}"
    cleared = await api.patch(path, {"expires_at": None}, expect=200)
    assert cleared["expires_at"] is None
    clock.set(utc("2027-01-01 00:00"))
    assert (await api.balance(org))["inference"]["capacity"] == 500_000
    assert await journal(api, org, action="purchase_expired") == []


async def test_an_expiry_set_in_the_past_expires_the_purchase_at_once(api: Api) -> None:
    org = await _org(api)
    purchase = await api.purchase(org, 500_000, 7_000)
    path = f"/v1/organizations/{org}/purchases/{purchase['id']}"

    expired = await api.patch(path, {"expires_at": "2026-03-01T00:00:00Z"}, expect=200)

    assert expired["expired"] is True
    entries = await journal(api, org, action="purchase_expired")
    assert [(e["kind"], e["capacity_delta"]) for e in entries] == [
        ("inference", -500_000),
        ("training", -7_000),
    ]
    balance = await api.balance(org)
    assert (balance["inference"]["capacity"], balance["training"]["capacity"]) == (0, 0)
    details = error_of(
        await api.call("PATCH", path, json={"expires_at": None}), 422, "purchase_expired"
    )
    assert "expired_at" in details


async def test_the_balance_lists_purchases_expiring_within_30_days(
    api: Api, clock: FakeClock
) -> None:
    org = await _org(api)
    await api.purchase(org, 1_000)
    soon = await api.purchase(org, 2_000, expires_at="2026-03-25T00:00:00Z")
    later = await api.purchase(org, 3_000, expires_at="2026-04-24T12:00:00Z")

    listed = (await api.balance(org))["expiring_purchases"]
    assert [p["id"] for p in listed] == [soon["id"]]

    clock.set(utc("2026-03-26 00:00"))
    listed = (await api.balance(org))["expiring_purchases"]
    assert [p["id"] for p in listed] == [later["id"]]


async def test_only_platform_operators_record_purchases_or_change_expiries(api: Api) -> None:
    org = await _org(api)
    purchase = await api.purchase(org, 1_000)
    admin = await org_api(api, org, "admin", "read", "usage")
    mark = await last_entry_id(api, org)

    error_of(
        await admin.call(
            "POST", f"/v1/organizations/{org}/purchases", json={"inference_amount": 10**6}
        ),
        403,
        "forbidden",
    )
    error_of(
        await admin.call(
            "PATCH",
            f"/v1/organizations/{org}/purchases/{purchase['id']}",
            json={"expires_at": "2026-03-16T00:00:00Z"},
        ),
        403,
        "forbidden",
    )

    assert await last_entry_id(api, org) == mark
    assert [p["id"] for p in await admin.get(f"/v1/organizations/{org}/purchases")] == [
        purchase["id"]
    ]


async def test_a_purchase_is_changed_only_through_its_own_organization(api: Api) -> None:
    org = await _org(api)
    other = await _org(api, name="Other")
    purchase = await api.purchase(org, 1_000)
    response = await api.call(
        "PATCH",
        f"/v1/organizations/{other}/purchases/{purchase['id']}",
        json={"expires_at": "2026-03-16T00:00:00Z"},
    )
    error_of(response, 404, "not_found")
    assert (await api.get(f"/v1/organizations/{org}/purchases"))[0]["expires_at"] is None
