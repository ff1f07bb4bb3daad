"""The metering API: usage, batches, reservations and what remains."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.helpers import Api, funded_org
from tests.scenarios import (
    commit,
    error_of,
    event,
    get_user,
    journal,
    last_entry_id,
    org_api,
    release,
    reserve,
    run_sweeper,
    user_balance,
    utc,
)
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database


async def _org_and_user(api: Api, **fields: Any) -> tuple[str, dict[str, Any]]:
    org = await funded_org(api)
    return org, await api.user(org, "ana@example.com", **fields)


# --- usage -----------------------------------------------------------------------------------


async def test_usage_names_the_user_by_id_or_by_email(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    by_id = (await api.use(ana["id"], 1_000, expect=200)).json()
    by_email = (await api.use("Ana@Example.com", 2_000, expect=200)).json()

    assert by_id["user_id"] == by_email["user_id"] == ana["id"]
    assert by_email["email"] == "ana@example.com"
    assert (by_email["used"], by_email["remaining"]) == (3_000, 197_000)
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 3_000


async def test_accepted_usage_says_what_remains_and_names_its_journal_entry(api: Api) -> None:
    org, ana = await _org_and_user(api)
    accepted = (
        await api.use(
            ana["id"],
            1_500,
            model="gpt-x",
            prompt_tokens=1_000,
            completion_tokens=500,
            dataset="docs",
            metadata={"request": "r-1"},
            expect=200,
        )
    ).json()

    assert accepted == {
        "accepted": True,
        "user_id": ana["id"],
        "email": "ana@example.com",
        "kind": "inference",
        "tokens": 1_500,
        "allowance": 200_000,
        "used": 1_500,
        "reserved": 0,
        "remaining": 198_500,
        "journal_entry_id": accepted["journal_entry_id"],
    }
    [entry] = await journal(api, org, action="usage")
    assert entry["id"] == accepted["journal_entry_id"]
    assert entry["details"] == {
        "model": "gpt-x",
        "prompt_tokens": 1_000,
        "completion_tokens": 500,
        "dataset": "docs",
        "metadata": {"request": "r-1"},
    }
    user = await get_user(api, ana["id"])
    assert user["last_activity_at"] is not None


async def test_prompt_and_completion_tokens_must_add_up_to_tokens(api: Api) -> None:
    org, ana = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    response = await api.use(ana["id"], 1_500, prompt_tokens=1_000, completion_tokens=400)
    error_of(response, 422, "invalid_request")
    assert await last_entry_id(api, org) == mark


async def test_usage_of_an_unknown_user_is_refused(api: Api) -> None:
    await _org_and_user(api)
    details = error_of(await api.use("nobody@example.com", 10), 404, "user_not_found")
    assert details == {}
    error_of(await api.use("00000000-0000-0000-0000-000000000000", 10), 404, "user_not_found")


async def test_a_service_key_with_the_usage_scope_meters_its_organization(api: Api) -> None:
    org, ana = await _org_and_user(api)
    service = await org_api(api, org, "usage")
    await service.use(ana["id"], 5_000, expect=200)
    [entry] = await journal(api, org, action="usage")
    assert entry["actor"] == "key:key-usage"


# --- batches ---------------------------------------------------------------------------------


async def test_each_event_of_a_batch_is_accepted_or_refused_on_its_own(api: Api) -> None:
    org, ana = await _org_and_user(api, max_train_tokens=10_000)
    bo = await api.user(org, "bo@example.com")
    await api.post(f"/v1/users/{bo['id']}/deactivate", expect=200)

    result = await api.post(
        "/v1/usage/batch",
        {
            "events": [
                event(ana["id"], 100_000),
                event(ana["id"], 100_001),
                event("nobody@example.com", 5),
                event(bo["id"], 5),
                event("ana@example.com", 4_000, "training"),
                event(ana["id"], 100_000),
            ]
        },
        expect=200,
    )

    assert (result["accepted"], result["refused"]) == (3, 3)
    assert [(r["index"], r["status"], r["accepted"]) for r in result["results"]] == [
        (0, 200, True),
        (1, 402, False),
        (2, 404, False),
        (3, 409, False),
        (4, 200, True),
        (5, 200, True),
    ]
    assert [r["error"]["code"] for r in result["results"] if r["error"]] == [
        "insufficient_tokens",
        "user_not_found",
        "user_deactivated",
    ]
    assert result["results"][1]["error"]["details"]["remaining"] == 100_000
    assert result["results"][5]["result"]["remaining"] == 0
    user = await get_user(api, ana["id"])
    assert (user["inference"]["used"], user["training"]["used"]) == (200_000, 4_000)
    assert len(await journal(api, org, action="usage")) == 3


async def test_a_batch_of_1000_events_is_accepted(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    events = [event(ana["id"], 7) for _ in range(1000)]
    result = await api.post("/v1/usage/batch", {"events": events}, expect=200)
    assert (result["accepted"], result["refused"]) == (1000, 0)
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 7_000


async def test_a_batch_of_1001_events_is_refused_whole(api: Api) -> None:
    org, ana = await _org_and_user(api)
    mark = await last_entry_id(api, org)
    events = [event(ana["id"], 7) for _ in range(1001)]
    response = await api.call("POST", "/v1/usage/batch", json={"events": events})
    details = error_of(response, 422, "invalid_request")
    assert details["errors"][0]["field"] == "events"
    assert await last_entry_id(api, org) == mark
    error_of(await api.call("POST", "/v1/usage/batch", json={"events": []}), 422, "invalid_request")


# --- reservations ----------------------------------------------------------------------------


async def test_a_reservation_holds_tokens_until_it_is_committed(api: Api, clock: FakeClock) -> None:
    _org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 50_000, ttl_seconds=120)).json()

    assert (held["status"], held["tokens"], held["committed"]) == ("open", 50_000, None)
    assert (held["reserved"], held["remaining"]) == (50_000, 150_000)
    assert datetime.fromisoformat(held["expires_at"]) == clock.now() + timedelta(seconds=120)
    assert (await get_user(api, ana["id"]))["inference"] == {
        "used": 0,
        "reserved": 50_000,
        "remaining": 150_000,
    }


async def test_a_reservation_without_a_ttl_gets_the_default(api: Api, clock: FakeClock) -> None:
    _org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 10)).json()
    assert datetime.fromisoformat(held["expires_at"]) == clock.now() + timedelta(seconds=300)
    for ttl in (0, 86_401, 1.5):
        error_of(
            await reserve(api, ana["id"], 10, ttl_seconds=ttl, expect=None), 422, "invalid_request"
        )


@pytest.mark.parametrize(
    ("actual", "used"),
    [(30_000, 30_000), (None, 50_000), (50_000, 50_000), (80_000, 80_000), (0, 0)],
    ids=["less", "default", "equal", "more", "nothing"],
)
async def test_committing_uses_the_actual_amount_and_releases_the_rest(
    api: Api, actual: int | None, used: int
) -> None:
    org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 50_000)).json()

    committed = (await commit(api, held["id"], actual)).json()

    assert (committed["status"], committed["committed"]) == ("committed", used)
    assert (committed["used"], committed["reserved"]) == (used, 0)
    assert committed["remaining"] == 200_000 - used
    [entry] = await journal(api, org, action="commit")
    assert (entry["used_delta"], entry["reserved_delta"]) == (used, -50_000)
    assert (await get_user(api, ana["id"]))["inference"]["used"] == used


async def test_committing_more_than_remains_is_refused_and_the_reservation_stays_open(
    api: Api,
) -> None:
    _org, ana = await _org_and_user(api)
    await api.use(ana["id"], 100_000, expect=200)
    held = (await reserve(api, ana["id"], 50_000)).json()

    details = error_of(
        await commit(api, held["id"], 150_001, expect=None), 402, "insufficient_tokens"
    )

    # What this commit could use: its own 50,000 reserved plus the 50,000 still free.
    assert (details["requested"], details["remaining"], details["reserved"]) == (
        150_001,
        100_000,
        50_000,
    )
    assert (await get_user(api, ana["id"]))["inference"]["reserved"] == 50_000
    committed = (await commit(api, held["id"], 100_000)).json()
    assert (committed["used"], committed["reserved"], committed["remaining"]) == (200_000, 0, 0)


async def test_committing_more_than_reserved_is_refused_where_the_organization_binds(
    api: Api,
) -> None:
    # 300,000 bought, two users of 200,000 (overallocation): the organization binds first.
    org = await funded_org(api, inference=300_000, overallocation=True)
    ana = await api.user(org)
    bo = await api.user(org)
    await api.use(bo["id"], 200_000, expect=200)
    held = (await reserve(api, ana["id"], 50_000)).json()
    mark = await last_entry_id(api, org)

    refused = await commit(api, held["id"], 100_001, expect=None)

    details = error_of(refused, 402, "insufficient_tokens")
    assert (details["remaining"], details["reserved"], details["limited_by"]) == (
        100_000,
        50_000,
        "organization",
    )
    assert await last_entry_id(api, org) == mark
    assert (await get_user(api, ana["id"]))["inference"]["reserved"] == 50_000
    committed = (await commit(api, held["id"], 100_000)).json()
    assert (committed["status"], committed["committed"], committed["used"]) == (
        "committed",
        100_000,
        100_000,
    )


async def test_a_released_reservation_gives_all_its_tokens_back(api: Api) -> None:
    org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 50_000)).json()

    released = (await release(api, held["id"])).json()

    assert (released["status"], released["used"], released["reserved"]) == ("released", 0, 0)
    assert released["remaining"] == 200_000
    [entry] = await journal(api, org, action="release")
    assert (entry["reservation_id"], entry["reserved_delta"]) == (held["id"], -50_000)


async def test_a_reservation_is_closed_exactly_once(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    committed = (await reserve(api, ana["id"], 50_000)).json()
    await commit(api, committed["id"], 10_000)
    released = (await reserve(api, ana["id"], 50_000)).json()
    await release(api, released["id"])

    for response, status in (
        (await commit(api, committed["id"], 10_000, expect=None), "committed"),
        (await release(api, committed["id"], expect=None), "committed"),
        (await commit(api, released["id"], expect=None), "released"),
        (await release(api, released["id"], expect=None), "released"),
    ):
        details = error_of(response, 409, "reservation_closed")
        assert details["status"] == status
    user = await get_user(api, ana["id"])
    assert user["inference"] == {"used": 10_000, "reserved": 0, "remaining": 190_000}


async def test_an_unknown_reservation_is_not_found(api: Api) -> None:
    await _org_and_user(api)
    missing = "00000000-0000-0000-0000-000000000000"
    error_of(await commit(api, missing, expect=None), 404, "reservation_not_found")
    error_of(await release(api, missing, expect=None), 404, "reservation_not_found")


async def test_the_sweeper_releases_reservations_whose_time_ran_out(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org, ana = await _org_and_user(api)
    short = (await reserve(api, ana["id"], 50_000, ttl_seconds=60)).json()
    long = (await reserve(api, ana["id"], 20_000, ttl_seconds=600)).json()
    clock.advance(seconds=61)

    report = await run_sweeper(db, clock)

    assert report.reservations_expired == 1
    assert (await get_user(api, ana["id"]))["inference"]["reserved"] == 20_000
    [entry] = await journal(api, org, action="reservation_expired")
    assert (entry["reservation_id"], entry["reserved_delta"], entry["actor"]) == (
        short["id"],
        -50_000,
        "system",
    )
    # The sweeper released it first; a commit still says why: its time ran out.
    details = error_of(await commit(api, short["id"], expect=None), 409, "reservation_expired")
    assert details["id"] == short["id"]
    details = error_of(await release(api, short["id"], expect=None), 409, "reservation_closed")
    assert details["status"] == "expired"
    await commit(api, long["id"], 20_000)
    assert (await run_sweeper(db, clock)).reservations_expired == 0


async def test_committing_after_the_ttl_is_refused_and_releases_the_tokens(
    api: Api, clock: FakeClock
) -> None:
    org, ana = await _org_and_user(api)
    held = (await reserve(api, ana["id"], 50_000, ttl_seconds=60)).json()
    clock.advance(seconds=60)

    response = await commit(api, held["id"], 10_000, expect=None)

    error_of(response, 409, "reservation_expired")
    assert (await get_user(api, ana["id"]))["inference"] == {
        "used": 0,
        "reserved": 0,
        "remaining": 200_000,
    }
    assert [e["reservation_id"] for e in await journal(api, org, action="reservation_expired")] == [
        held["id"]
    ]


async def test_a_debit_that_fits_only_once_an_overdue_reservation_is_released_is_accepted(
    api: Api, clock: FakeClock
) -> None:
    org, ana = await _org_and_user(api)
    await reserve(api, ana["id"], 150_000, ttl_seconds=60)
    error_of(await api.use(ana["id"], 100_000), 402, "insufficient_tokens")
    clock.advance(seconds=120)

    accepted = (await api.use(ana["id"], 100_000, expect=200)).json()

    assert (accepted["used"], accepted["reserved"], accepted["remaining"]) == (100_000, 0, 100_000)
    actions = [e["action"] for e in await journal(api, org, kind="inference")]
    assert actions[-2:] == ["reservation_expired", "usage"]


# --- what remains ----------------------------------------------------------------------------


async def test_the_user_balance_is_the_user_remaining_when_the_capacity_does_not_bind(
    api: Api,
) -> None:
    _org, ana = await _org_and_user(api, max_train_tokens=5_000)
    await api.use(ana["id"], 30_000, expect=200)
    await reserve(api, ana["id"], 20_000)

    balance = await user_balance(api, ana["id"])

    assert balance["inference"] == {
        "allowance": 200_000,
        "used": 30_000,
        "reserved": 20_000,
        "remaining": 150_000,
        "organization_remaining": None,
        "available": 150_000,
    }
    assert balance["training"]["available"] == 5_000
    assert balance["status"] == "active"


async def test_the_user_balance_is_capped_by_what_the_organization_has_left(api: Api) -> None:
    org = await funded_org(api, inference=300_000, overallocation=True)
    ana = await api.user(org)
    bo = await api.user(org)
    await api.use(ana["id"], 180_000, expect=200)
    await reserve(api, ana["id"], 20_000)

    balance = await user_balance(api, bo["id"])

    assert balance["inference"]["remaining"] == 200_000
    assert balance["inference"]["organization_remaining"] == 100_000
    assert balance["inference"]["available"] == 100_000
    await api.use(bo["id"], 100_000, expect=200)
    after = await user_balance(api, bo["id"])
    assert (after["inference"]["remaining"], after["inference"]["available"]) == (100_000, 0)


async def test_the_user_balance_reflects_a_purchase_that_just_expired(
    api: Api, clock: FakeClock
) -> None:
    org = (await api.organization())["id"]
    await api.purchase(org, 300_000)
    await api.purchase(org, 300_000, expires_at="2026-03-20T00:00:00Z")
    ana = await api.user(org, max_tokens=300_000)
    bo = await api.user(org, max_tokens=300_000)
    await api.use(ana["id"], 250_000, expect=200)
    clock.set(utc("2026-03-21 00:00"))

    balance = await user_balance(api, bo["id"])

    # What POST /v1/usage would accept right now: the organization has 50,000 left.
    assert balance["inference"]["organization_remaining"] == 50_000
    assert balance["inference"]["available"] == 50_000


async def test_a_deactivated_user_has_nothing_available(api: Api) -> None:
    _org, ana = await _org_and_user(api)
    await api.use(ana["id"], 1_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)
    balance = await user_balance(api, ana["id"])
    assert balance["status"] == "deactivated"
    assert (balance["inference"]["available"], balance["inference"]["used"]) == (0, 1_000)
