"""SPEC section 3, rules 1-8: each rule has its own tests, through the REST API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import (
    commit,
    entries_since,
    error_of,
    get_user,
    journal,
    last_entry_id,
    reserve,
    user_balance,
    utc,
)
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.journal.service import verify

# --- rule 1: allocated ≤ capacity ------------------------------------------------------------


async def test_rule1_raising_an_allowance_beyond_capacity_is_refused_with_the_shortfall(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, "ana@example.com")
    before = await last_entry_id(api, org)

    response = await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 1_100_000})

    details = error_of(response, 422, "exceeds_balance")
    assert details["kind"] == "inference"
    assert details["capacity"] == 1_000_000
    assert details["allocated_after"] == 1_100_000
    assert details["shortfall"] == 100_000
    assert "Ana's Max Tokens of 1,100,000" in response.json()["error"]["message"]
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await api.balance(org))["inference"]["allocated"] == 200_000
    assert await last_entry_id(api, org) == before


async def test_rule1_allocating_exactly_the_capacity_is_allowed(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org)
    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 1_000_000}, expect=200)
    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 1_000_000
    assert balance["inference"]["balance"] == 0
    error_of(
        await api.call(
            "POST", f"/v1/organizations/{org}/users", json={"email": "bo@example.com", "name": "Bo"}
        ),
        422,
        "exceeds_balance",
    )


async def test_rule1_a_batch_that_overshoots_names_the_raising_row_that_causes_it(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, "ana@example.com")
    bo = await api.user(org, "bo@example.com")

    response = await api.allowances(
        org,
        {"user": ana["id"], "max_tokens": 500_000},
        {"user": "bo@example.com", "max_tokens": 600_000},
    )

    details = error_of(response, 422, "allowance_change_refused")
    rows = details["refused"]
    # Refusing Bo's raise, the larger, is enough; Ana's is not named.
    assert [(r["index"], r["code"], r["shortfall"]) for r in rows] == [
        (1, "exceeds_balance", 100_000),
    ]
    assert details["balance_after"]["inference"] == {
        "capacity": 1_000_000,
        "allocated": 1_100_000,
        "balance": -100_000,
    }
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000
    assert (await get_user(api, bo["id"]))["max_tokens"] == 200_000


async def test_rule1_overallocation_stays_on_while_either_kind_is_over_allocated(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000, training=100_000, overallocation=True)
    ana = await api.user(org, max_train_tokens=60_000)
    await api.user(org, max_train_tokens=60_000)  # training: 120,000 of 100,000; inference fits
    mark = await last_entry_id(api, org)

    response = await api.call(
        "PATCH", f"/v1/organizations/{org}", json={"overallocation": False, "name": "Renamed"}
    )

    details = error_of(response, 422, "exceeds_balance")
    assert details == {
        "kind": "training",
        "capacity": 100_000,
        "allocated": 120_000,
        "shortfall": 20_000,
    }
    assert "overallocation" in response.json()["error"]["message"]
    after = await api.get(f"/v1/organizations/{org}")
    assert (after["overallocation"], after["name"]) == (True, "Acme")
    assert await last_entry_id(api, org) == mark

    # Once allocated fits the capacity again, overallocation can go off.
    await api.patch(f"/v1/users/{ana['id']}", {"max_train_tokens": 40_000}, expect=200)
    changed = await api.patch(f"/v1/organizations/{org}", {"overallocation": False}, expect=200)
    assert changed["overallocation"] is False


# --- rule 2: 0 ≤ used + reserved ≤ allowance -------------------------------------------------


async def test_rule2_usage_beyond_the_allowance_is_refused_whole_with_what_remains(
    api: Api,
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    before = await last_entry_id(api, org)

    details = error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")

    assert details["remaining"] == 50_000
    assert details["requested"] == 50_001
    assert details["limited_by"] == "user"
    assert await last_entry_id(api, org) == before
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 150_000


async def test_rule2_reserved_tokens_count_against_the_allowance(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    await reserve(api, ana["id"], 50_000)

    details = error_of(await api.use(ana["id"], 1), 402, "insufficient_tokens")
    assert details["remaining"] == 0
    error_of(await reserve(api, ana["id"], 1, expect=None), 402, "insufficient_tokens")

    stored = (await get_user(api, ana["id"]))["inference"]
    assert stored == {"used": 150_000, "reserved": 50_000, "remaining": 0}


async def test_rule2_the_allowance_can_be_used_to_the_last_token(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    accepted = (await api.use(ana["id"], 200_000, expect=200)).json()
    assert accepted["remaining"] == 0
    assert accepted["used"] == 200_000


async def test_rule2_kinds_are_metered_separately(api: Api) -> None:
    org = await funded_org(api, training=100_000)
    ana = await api.user(org, max_train_tokens=10_000)
    await api.use(ana["id"], 10_000, "training", expect=200)
    details = error_of(await api.use(ana["id"], 1, "training"), 402, "insufficient_tokens")
    assert details["kind"] == "training"
    await api.use(ana["id"], 1, "inference", expect=200)


# --- rule 3: period usage ≤ capacity where it binds ------------------------------------------


async def test_rule3_with_overallocation_on_usage_is_capped_by_capacity(api: Api) -> None:
    org = await funded_org(api, inference=300_000, overallocation=True)
    ana = await api.user(org)
    bo = await api.user(org)
    assert (await api.balance(org))["inference"]["allocated"] == 400_000
    await api.use(ana["id"], 200_000, expect=200)

    details = error_of(await api.use(bo["id"], 100_001), 402, "insufficient_tokens")

    assert details["limited_by"] == "organization"
    assert details["remaining"] == 100_000
    await api.use(bo["id"], 100_000, expect=200)
    balance = await api.balance(org)
    assert balance["inference"]["used"] == balance["inference"]["capacity"] == 300_000


async def test_rule3_after_a_purchase_expires_usage_is_capped_by_what_is_left(
    api: Api, clock: FakeClock
) -> None:
    org = (await api.organization())["id"]
    await api.purchase(org, 300_000)
    await api.purchase(org, 300_000, expires_at="2026-03-20T00:00:00Z")
    ana = await api.user(org, max_tokens=300_000)
    bo = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 250_000, expect=200)
    clock.set(utc("2026-03-21 00:00"))

    details = error_of(await api.use(bo["id"], 50_001), 402, "insufficient_tokens")

    assert details["limited_by"] == "organization"
    assert details["remaining"] == 50_000
    await api.use(bo["id"], 50_000, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 300_000


async def test_rule3_reservations_count_against_the_capacity(api: Api) -> None:
    org = await funded_org(api, inference=300_000, overallocation=True)
    ana = await api.user(org)
    bo = await api.user(org)
    await reserve(api, ana["id"], 200_000)
    details = error_of(
        await reserve(api, bo["id"], 100_001, expect=None), 402, "insufficient_tokens"
    )
    assert details["limited_by"] == "organization"
    await reserve(api, bo["id"], 100_000)


async def test_rule3_does_not_bind_while_allocated_fits_the_capacity(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000, overallocation=True)
    ana = await api.user(org)
    balance = await user_balance(api, ana["id"])
    assert balance["inference"]["organization_remaining"] is None
    assert balance["inference"]["available"] == 200_000


# --- rule 4: the minimum ---------------------------------------------------------------------


async def test_rule4_creating_a_user_assigns_the_minimum_from_the_balance(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000)
    before = await last_entry_id(api, org)

    ana = await api.user(org, "ana@example.com")

    assert ana["max_tokens"] == 200_000
    assert ana["max_train_tokens"] == 0
    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 200_000
    assert balance["inference"]["balance"] == 800_000
    created = [e for e in await entries_since(api, org, before) if e["kind"] == "inference"]
    assert [(e["action"], e["amount"], e["allocated_after"]) for e in created] == [
        ("user_created", 200_000, 200_000)
    ]


async def test_rule4_the_minimums_come_from_the_policy(api: Api) -> None:
    org = await funded_org(api, min_inference=50_000, min_training=10_000)
    ana = await api.user(org)
    assert (ana["max_tokens"], ana["max_train_tokens"]) == (50_000, 10_000)


async def test_rule4_creating_a_user_fails_clearly_when_the_balance_cannot_cover_the_minimum(
    api: Api,
) -> None:
    org = await funded_org(api, inference=350_000)
    await api.user(org)
    before = await last_entry_id(api, org)

    response = await api.call(
        "POST", f"/v1/organizations/{org}/users", json={"email": "bo@example.com", "name": "Bo"}
    )

    # One user's change answers the rule's own code, and names no user that doesn't exist.
    details = error_of(response, 422, "exceeds_balance")
    assert (details["kind"], details["shortfall"]) == ("inference", 50_000)
    [row] = details["refused"]
    assert (row["code"], row["email"], row["shortfall"]) == (
        "exceeds_balance",
        "bo@example.com",
        50_000,
    )
    assert "user_id" not in row
    assert await last_entry_id(api, org) == before
    users = await api.get(f"/v1/organizations/{org}/users")
    assert users["total"] == 1
    assert "bo@example.com" not in [u["email"] for u in users["users"]]


async def test_rule4_a_user_cannot_be_created_below_the_minimum(api: Api) -> None:
    org = await funded_org(api)
    response = await api.call(
        "POST",
        f"/v1/organizations/{org}/users",
        json={"email": "bo@example.com", "name": "Bo", "max_tokens": 199_999},
    )
    details = error_of(response, 422, "below_minimum")
    assert (details["minimum"], details["requested"]) == (200_000, 199_999)
    assert [(r["code"], r["minimum"]) for r in details["refused"]] == [("below_minimum", 200_000)]


async def test_rule4_an_allowance_cannot_be_lowered_below_the_minimum(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com", max_tokens=300_000)

    response = await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 150_000})

    details = error_of(response, 422, "below_minimum")
    assert details["minimum"] == 200_000
    assert details["requested"] == 150_000
    assert "200,000" in response.json()["error"]["message"]
    assert (await get_user(api, ana["id"]))["max_tokens"] == 300_000


async def test_rule4_raising_the_minimum_above_what_users_have_is_refused(api: Api) -> None:
    org = await funded_org(api)
    await api.user(org)
    response = await api.call("PATCH", f"/v1/organizations/{org}", json={"min_inference": 250_000})
    details = error_of(response, 422, "below_minimum")
    assert details["users_below"] == 1
    assert (await api.get(f"/v1/organizations/{org}"))["min_inference"] == 200_000


# --- rule 5: never below used + reserved -----------------------------------------------------


async def test_rule5_an_allowance_cannot_be_set_below_used_and_reserved(api: Api) -> None:
    org = await funded_org(api, min_inference=10_000)
    ana = await api.user(org, max_tokens=200_000)
    await api.use(ana["id"], 120_000, expect=200)
    await reserve(api, ana["id"], 30_000)

    response = await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 149_999})

    details = error_of(response, 422, "below_used")
    assert details["used_and_reserved"] == 150_000
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000

    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 150_000}, expect=200)
    assert (await get_user(api, ana["id"]))["inference"]["remaining"] == 0


async def test_rule5_applies_to_batches_too(api: Api) -> None:
    org = await funded_org(api, min_inference=0, training=100_000)
    ana = await api.user(org, max_train_tokens=50_000)
    await api.use(ana["id"], 40_000, "training", expect=200)
    response = await api.allowances(org, {"user": ana["id"], "max_train_tokens": 39_999})
    details = error_of(response, 422, "allowance_change_refused")
    assert [(r["code"], r["kind"]) for r in details["refused"]] == [("below_used", "training")]


async def test_rule5_reactivating_below_what_was_used_is_refused_like_any_change(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 250_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)

    response = await api.call(
        "POST", f"/v1/users/{ana['id']}/reactivate", json={"max_tokens": 200_000}
    )

    details = error_of(response, 422, "below_used")
    assert details["used_and_reserved"] == 250_000
    assert (await get_user(api, ana["id"]))["status"] == "deactivated"


# --- rule 6: deactivation --------------------------------------------------------------------


async def test_rule6_a_deactivated_user_cannot_use_or_reserve_tokens(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    before = await last_entry_id(api, org)

    error_of(await api.use(ana["id"], 1), 409, "user_deactivated")
    error_of(await reserve(api, ana["id"], 1, expect=None), 409, "user_deactivated")

    assert await last_entry_id(api, org) == before


async def test_rule6_deactivation_cancels_open_reservations_at_once(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    held = (await reserve(api, ana["id"], 30_000)).json()

    deactivated = await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)

    assert deactivated["inference"]["reserved"] == 0
    releases = await journal(api, org, action="release")
    assert [(e["reservation_id"], e["reserved_delta"], e["reason"]) for e in releases] == [
        (held["id"], -30_000, "user deactivated")
    ]
    details = error_of(await commit(api, held["id"], expect=None), 409, "reservation_closed")
    assert details["status"] == "released"
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0


async def test_rule6_deactivation_returns_the_unused_allowance_and_keeps_the_used_part(
    api: Api,
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 100_000, expect=200)
    await reserve(api, ana["id"], 50_000)

    user = await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)

    assert user["status"] == "deactivated"
    assert user["max_tokens"] == 100_000  # the used part stays allocated this period
    balance = await api.balance(org)
    assert balance["inference"]["allocated"] == 100_000
    assert balance["inference"]["used"] == 100_000
    [entry] = await journal(api, org, action="user_deactivated", kind="inference")
    assert entry["amount"] == 200_000
    assert entry["allocated_delta"] == -200_000
    assert entry["allowance_after"] == 100_000


async def test_rule6_the_used_part_returns_to_the_balance_when_the_period_ends(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 100_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    clock.set(utc("2026-04-01 00:00"))

    balance = await api.balance(org)

    assert balance["inference"]["allocated"] == 0
    assert balance["inference"]["balance"] == 1_000_000
    [reset] = await journal(api, org, action="period_reset", user=ana["id"], kind="inference")
    assert reset["allocated_delta"] == -100_000
    assert reset["used_after"] == 0
    assert reset["allowance_after"] == 0
    user = await get_user(api, ana["id"])
    assert (user["max_tokens"], user["inference"]["used"]) == (0, 0)


async def test_rule6_history_stays_after_deactivation(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 1_234, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)

    history = await api.get(f"/v1/users/{ana['id']}/usage", params={"granularity": "month"})

    assert [(p["inference"], p["training"]) for p in history["points"]] == [(1_234, 0)]
    assert [e["amount"] for e in await journal(api, org, action="usage", user=ana["id"])] == [1_234]


async def test_rule6_reactivating_assigns_at_least_the_minimum(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org)
    await api.use(ana["id"], 50_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    assert (await api.balance(org))["inference"]["allocated"] == 50_000

    user = await api.post(f"/v1/users/{ana['id']}/reactivate", expect=200)

    assert user["status"] == "active"
    assert user["max_tokens"] == 200_000
    assert user["inference"]["used"] == 50_000
    assert user["inference"]["remaining"] == 150_000
    assert (await api.balance(org))["inference"]["allocated"] == 200_000
    [entry] = await journal(api, org, action="user_reactivated", kind="inference")
    assert entry["allocated_delta"] == 150_000
    await api.use(ana["id"], 150_000, expect=200)


async def test_rule6_reactivating_in_a_later_period_assigns_the_minimum_afresh(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 120_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    clock.set(utc("2026-04-10 00:00"))

    user = await api.post(f"/v1/users/{ana['id']}/reactivate", expect=200)

    assert (user["max_tokens"], user["inference"]["used"]) == (200_000, 0)
    assert (await api.balance(org))["inference"]["allocated"] == 200_000
    await api.use(ana["id"], 200_000, expect=200)


async def test_rule6_reactivating_with_a_larger_allowance(api: Api) -> None:
    org = await funded_org(api, inference=1_000_000)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    user = await api.post(f"/v1/users/{ana['id']}/reactivate", {"max_tokens": 400_000}, expect=200)
    assert user["max_tokens"] == 400_000


async def test_rule6_reactivating_below_the_minimum_is_refused(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    response = await api.call(
        "POST", f"/v1/users/{ana['id']}/reactivate", json={"max_tokens": 100_000}
    )
    error_of(response, 422, "below_minimum")
    assert (await get_user(api, ana["id"]))["status"] == "deactivated"


async def test_rule6_reactivation_fails_clearly_when_the_balance_cannot_cover_it(
    api: Api,
) -> None:
    org = await funded_org(api, inference=400_000)
    ana = await api.user(org)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    await api.user(org, max_tokens=300_000)
    before = await last_entry_id(api, org)

    details = error_of(
        await api.call("POST", f"/v1/users/{ana['id']}/reactivate"), 422, "exceeds_balance"
    )

    assert details["shortfall"] == 100_000
    assert (await get_user(api, ana["id"]))["status"] == "deactivated"
    assert await last_entry_id(api, org) == before


# --- rule 7: the journal ---------------------------------------------------------------------


async def test_rule7_every_change_is_exactly_one_entry_with_the_balances_after(api: Api) -> None:
    org = (await api.organization())["id"]
    mark = await last_entry_id(api, org)
    await api.purchase(org, 1_000_000)
    [purchase] = await entries_since(api, org, mark)
    assert (purchase["action"], purchase["capacity_delta"], purchase["capacity_after"]) == (
        "purchase",
        1_000_000,
        1_000_000,
    )

    ana = await api.user(org)
    mark = await last_entry_id(api, org)
    await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 250_000}, expect=200)
    [change] = await entries_since(api, org, mark)
    assert change["action"] == "allowance_changed"
    assert (change["allowance_delta"], change["allowance_after"]) == (50_000, 250_000)
    assert (change["allocated_delta"], change["allocated_after"]) == (50_000, 250_000)

    mark = await last_entry_id(api, org)
    await api.use(ana["id"], 1_000, expect=200)
    [usage] = await entries_since(api, org, mark)
    assert (usage["action"], usage["used_delta"], usage["used_after"]) == ("usage", 1_000, 1_000)
    assert (usage["allowance_after"], usage["reserved_after"]) == (250_000, 0)
    assert usage["user_id"] == ana["id"]
    assert usage["actor"] == "operator:ops"

    mark = await last_entry_id(api, org)
    held = (await reserve(api, ana["id"], 5_000)).json()
    [reserved] = await entries_since(api, org, mark)
    assert (reserved["action"], reserved["reserved_after"]) == ("reserve", 5_000)

    mark = await last_entry_id(api, org)
    await commit(api, held["id"], 4_000)
    [committed] = await entries_since(api, org, mark)
    assert committed["action"] == "commit"
    assert (committed["used_delta"], committed["reserved_delta"]) == (4_000, -5_000)
    assert (committed["used_after"], committed["reserved_after"]) == (5_000, 0)

    mark = await last_entry_id(api, org)
    other = (await reserve(api, ana["id"], 7_000)).json()
    await api.post(f"/v1/reservations/{other['id']}/release", expect=200)
    entries = await entries_since(api, org, mark)
    assert [(e["action"], e["reserved_after"]) for e in entries] == [
        ("reserve", 7_000),
        ("release", 0),
    ]


async def test_rule7_a_refused_change_writes_no_entry(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    mark = await last_entry_id(api, org)
    await api.use(ana["id"], 300_000, expect=402)
    await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": 5_000_000}, expect=422)
    await api.call(
        "POST",
        f"/v1/organizations/{org}/allowances",
        json={"changes": [{"user": ana["id"], "max_tokens": 100}]},
        expect=422,
    )
    assert await last_entry_id(api, org) == mark


async def test_rule7_replaying_the_journal_gives_every_stored_balance(
    api: Api, db: Database
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, max_train_tokens=50_000)
    await api.use(ana["id"], 10_000, expect=200)
    await api.use(ana["id"], 5_000, "training", expect=200)
    await reserve(api, ana["id"], 20_000)

    report = await db.read(verify)

    assert report.clean, report.differences
    assert report.entries == len(await journal(api, org))
    assert (report.organizations, report.users) == (1, 1)


# --- rule 8: amounts -------------------------------------------------------------------------

BAD_AMOUNTS: list[Any] = [0, -1, 1.5, "100", None, True, 2**53 + 1, 10**30]
BAD_IDS = ["zero", "negative", "fractional", "string", "null", "bool", "2^53+1", "10^30"]


@pytest.mark.parametrize("tokens", BAD_AMOUNTS, ids=BAD_IDS)
async def test_rule8_usage_amounts_must_be_whole_positive_and_sane(api: Api, tokens: Any) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    mark = await last_entry_id(api, org)

    details = error_of(await api.use(ana["id"], tokens), 422, "invalid_amount")

    assert [e["field"] for e in details["errors"]] == ["tokens"]
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0


async def test_rule8_reservation_commit_and_batch_amounts_are_checked_the_same_way(
    api: Api,
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    mark = await last_entry_id(api, org)
    for tokens in BAD_AMOUNTS:
        error_of(await reserve(api, ana["id"], tokens, expect=None), 422, "invalid_amount")
        response = await api.call(
            "POST",
            "/v1/usage/batch",
            json={
                "events": [
                    {
                        "user": ana["id"],
                        "kind": "inference",
                        "tokens": tokens,
                        "idempotency_key": "k",
                    }
                ]
            },
        )
        error_of(response, 422, "invalid_amount")
    held = (await reserve(api, ana["id"], 1_000)).json()
    mark = await last_entry_id(api, org)
    bad_commits: list[Any] = [-1, 1.5, "100", True, 2**53 + 1, 10**30]
    for tokens in bad_commits:
        error_of(await commit(api, held["id"], tokens, expect=None), 422, "invalid_amount")
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["inference"]["reserved"] == 1_000


async def test_rule8_purchase_amounts_are_checked(api: Api) -> None:
    org = (await api.organization())["id"]
    mark = await last_entry_id(api, org)
    for amount in [-1, 1.5, "100", None, True, 2**53 + 1, 10**30]:
        response = await api.call(
            "POST", f"/v1/organizations/{org}/purchases", json={"inference_amount": amount}
        )
        details = error_of(response, 422, "invalid_amount")
        assert details["errors"][0]["field"] == "inference_amount"
    details = error_of(
        await api.call("POST", f"/v1/organizations/{org}/purchases", json={}),
        422,
        "invalid_amount",
    )
    assert await last_entry_id(api, org) == mark
    assert (await api.balance(org))["inference"]["capacity"] == 0


async def test_rule8_allowance_amounts_are_checked(api: Api) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    mark = await last_entry_id(api, org)
    for amount in [-1, 1.5, "300000", True, 2**53 + 1, 10**30]:
        error_of(
            await api.call("PATCH", f"/v1/users/{ana['id']}", json={"max_tokens": amount}),
            422,
            "invalid_amount",
        )
        error_of(
            await api.allowances(org, {"user": ana["id"], "max_train_tokens": amount}),
            422,
            "invalid_amount",
        )
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["max_tokens"] == 200_000


async def test_rule8_the_largest_amount_accepted_is_2_to_the_53(api: Api) -> None:
    org = (await api.organization())["id"]
    await api.purchase(org, 2**53)
    assert (await api.balance(org))["inference"]["capacity"] == 2**53
