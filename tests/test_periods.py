"""Periods: calendar months in the organization's time zone, or none at all."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tests.helpers import Api, funded_org
from tests.scenarios import (
    commit,
    error_of,
    event,
    get_user,
    journal,
    reserve,
    run_sweeper,
    user_balance,
    utc,
)
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def _history(api: Api, user_id: str, granularity: str = "month") -> list[tuple[str, int]]:
    history = await api.get(f"/v1/users/{user_id}/usage", params={"granularity": granularity})
    points: list[dict[str, Any]] = history["points"]
    return [(p["start"], p["inference"]) for p in points]


async def test_berlin_usage_late_on_the_last_day_counts_in_the_old_month(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, time_zone="Europe/Berlin")
    ana = await api.user(org)
    clock.set(utc("2026-03-31 21:30"))  # 23:30 in Berlin (CEST)
    await api.use(ana["id"], 1_000, expect=200)

    clock.set(utc("2026-03-31 22:30"))  # 00:30 on 1 April in Berlin, still March in UTC

    user = await get_user(api, ana["id"])
    assert user["inference"]["used"] == 0
    assert user["inference"]["remaining"] == 200_000
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-31 22:00")
    assert balance["inference"]["used"] == 0
    accepted = (await api.use(ana["id"], 500, expect=200)).json()
    assert accepted["used"] == 500
    assert await _history(api, ana["id"]) == [
        ("2026-03-01T00:00:00+01:00", 1_000),
        ("2026-04-01T00:00:00+02:00", 500),
    ]


async def test_los_angeles_month_ends_at_local_midnight(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api, time_zone="America/Los_Angeles")
    ana = await api.user(org)
    clock.set(utc("2026-04-01 06:30"))  # 23:30 on 31 March in Los Angeles (PDT)
    await api.use(ana["id"], 1_000, expect=200)
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-01 08:00")  # PST
    assert instant(balance["period_end"]) == utc("2026-04-01 07:00")  # PDT
    assert balance["inference"]["used"] == 1_000

    clock.set(utc("2026-04-01 07:30"))  # 00:30 on 1 April in Los Angeles

    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-04-01 07:00")
    assert balance["inference"]["used"] == 0


async def test_a_new_period_resets_used_with_a_period_reset_entry(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 1_500, expect=200)
    clock.set(utc("2026-04-02 09:00"))

    await api.use(ana["id"], 100, expect=200)

    [reset] = await journal(api, org, action="period_reset")
    assert reset["user_id"] == ana["id"]
    assert (reset["amount"], reset["used_delta"], reset["used_after"]) == (1_500, -1_500, 0)
    assert instant(reset["details"]["period_start"]) == utc("2026-03-01 00:00")
    [started] = await journal(api, org, action="period_started")
    assert instant(started["details"]["period_start"]) == utc("2026-04-01 00:00")
    usage = await journal(api, org, action="usage")
    assert [(e["amount"], e["used_after"]) for e in usage] == [(1_500, 1_500), (100, 100)]


async def test_past_periods_stay_in_the_usage_history(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 1_500, expect=200)
    await api.use(ana["id"], 500, "inference", expect=200)
    clock.set(utc("2026-04-02 09:00"))
    await api.use(ana["id"], 100, expect=200)
    clock.set(utc("2026-05-20 09:00"))
    await api.use(ana["id"], 7, expect=200)

    assert await _history(api, ana["id"]) == [
        ("2026-03-01T00:00:00Z", 2_000),
        ("2026-04-01T00:00:00Z", 100),
        ("2026-05-01T00:00:00Z", 7),
    ]
    assert await _history(api, ana["id"], "day") == [("2026-05-20T00:00:00Z", 7)]


async def test_the_whole_allowance_is_available_again_in_a_new_period(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 200_000, expect=200)
    error_of(await api.use(ana["id"], 1), 402, "insufficient_tokens")
    clock.set(utc("2026-04-01 00:00"))
    await api.use(ana["id"], 200_000, expect=200)


async def test_last_periods_usage_does_not_hold_back_a_lower_allowance(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, min_inference=10_000)
    ana = await api.user(org, max_tokens=200_000)
    await api.use(ana["id"], 180_000, expect=200)
    clock.set(utc("2026-04-03 00:00"))

    user = await api.patch(f"/v1/users/{ana['id']}", {"max_tokens": 50_000}, expect=200)

    assert (user["max_tokens"], user["inference"]["used"]) == (50_000, 0)
    assert (await api.balance(org))["inference"]["allocated"] == 50_000


async def test_the_capacity_binds_afresh_each_period(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api, inference=300_000, overallocation=True)
    ana = await api.user(org)
    bo = await api.user(org)
    await api.use(ana["id"], 200_000, expect=200)
    await api.use(bo["id"], 100_000, expect=200)
    error_of(await api.use(bo["id"], 1), 402, "insufficient_tokens")
    clock.set(utc("2026-04-01 00:00"))

    await api.use(bo["id"], 200_000, expect=200)

    details = error_of(await api.use(ana["id"], 100_001), 402, "insufficient_tokens")
    assert (details["limited_by"], details["remaining"]) == ("organization", 100_000)


async def test_berlin_periods_follow_daylight_saving_time(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api, time_zone="Europe/Berlin")
    ana = await api.user(org)
    # March starts in winter time (UTC+1) and ends in summer time (UTC+2): 743 hours.
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-02-28 23:00")
    assert instant(balance["period_end"]) == utc("2026-03-31 22:00")

    # Daylight saving time ends on 25 October: October ends at 23:00 UTC.
    clock.set(utc("2026-10-31 22:30"))  # 23:30 CET
    await api.use(ana["id"], 3_000, expect=200)
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-09-30 22:00")
    assert instant(balance["period_end"]) == utc("2026-10-31 23:00")
    clock.set(utc("2026-10-31 23:30"))  # 00:30 CET on 1 November

    assert (await user_balance(api, ana["id"]))["inference"]["used"] == 0
    await api.use(ana["id"], 4_000, expect=200)
    assert await _history(api, ana["id"]) == [
        ("2026-10-01T00:00:00+02:00", 3_000),
        ("2026-11-01T00:00:00+01:00", 4_000),
    ]


async def test_with_period_none_usage_never_resets(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org = await funded_org(api, period="none")
    ana = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    clock.set(utc("2026-06-15 12:00"))
    await run_sweeper(db, clock)

    user = await get_user(api, ana["id"])
    assert (user["inference"]["used"], user["inference"]["remaining"]) == (150_000, 50_000)
    details = error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")
    assert details["remaining"] == 50_000
    balance = await api.balance(org)
    assert (balance["period_start"], balance["period_end"]) == (None, None)
    assert balance["inference"]["used"] == 150_000
    assert await journal(api, org, action="period_reset") == []
    assert await journal(api, org, action="period_started") == []


async def test_changing_the_period_to_none_and_back_begins_a_new_period_each_time(
    api: Api,
) -> None:
    """A period beginning where an earlier one began (both at the start of this month, or
    both `none`) does not take up that period's usage."""
    org = await funded_org(api)
    ana, bob = await api.user(org), await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    await api.use(bob["id"], 50_000, expect=200)

    await api.patch(f"/v1/organizations/{org}", {"period": "none"}, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 0
    await api.use(bob["id"], 100_000, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 100_000

    await api.patch(f"/v1/organizations/{org}", {"period": "monthly"}, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 0
    for user in (ana, bob):
        assert (await get_user(api, user["id"]))["inference"]["used"] == 0
    await api.use(ana["id"], 200_000, expect=200)  # her whole allowance, afresh

    await api.patch(f"/v1/organizations/{org}", {"period": "none"}, expect=200)
    assert (await api.balance(org))["inference"]["used"] == 0
    assert (await get_user(api, bob["id"]))["inference"]["used"] == 0  # not the 100,000
    await api.use(bob["id"], 200_000, expect=200)
    resets = [(e["user_id"], e["amount"]) for e in await journal(api, org, action="period_reset")]
    assert sorted(resets) == sorted(
        [
            (bob["id"], 50_000),  # March's, at bob's first use under `none`
            (ana["id"], 150_000),  # March's, when a period began at March's start again
            (bob["id"], 100_000),  # the first `none` period's, when `none` began again
        ]
    )


async def test_open_reservations_carry_over_a_period_boundary(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    clock.set(utc("2026-03-31 23:50"))
    held = (await reserve(api, ana["id"], 50_000, ttl_seconds=3600)).json()
    clock.set(utc("2026-04-01 00:10"))

    user = await get_user(api, ana["id"])
    assert user["inference"] == {"used": 0, "reserved": 50_000, "remaining": 150_000}
    assert (await api.balance(org))["inference"]["reserved"] == 50_000

    committed = (await commit(api, held["id"], 30_000)).json()

    assert (committed["used"], committed["reserved"], committed["remaining"]) == (
        30_000,
        0,
        170_000,
    )
    assert await _history(api, ana["id"]) == [
        ("2026-03-01T00:00:00Z", 150_000),
        ("2026-04-01T00:00:00Z", 30_000),
    ]


async def test_a_batch_arriving_first_in_a_new_period_starts_it(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 200_000, expect=200)
    clock.set(utc("2026-04-01 00:00"))

    result = await api.post(
        "/v1/usage/batch", {"events": [event(ana["id"], 150_000), event(ana["id"], 50_000)]}
    )

    assert (result["accepted"], result["refused"]) == (2, 0)
    assert len(await journal(api, org, action="period_started")) == 1
    assert [e["amount"] for e in await journal(api, org, action="period_reset")] == [200_000]


async def test_the_sweeper_starts_the_new_period_once(
    api: Api, clock: FakeClock, db: Database
) -> None:
    org = await funded_org(api)
    await api.user(org)
    clock.set(utc("2026-04-01 00:00:01"))

    first = await run_sweeper(db, clock)
    second = await run_sweeper(db, clock)

    assert (first.organizations_updated, second.organizations_updated) == (1, 0)
    assert len(await journal(api, org, action="period_started")) == 1
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-04-01 00:00")


async def test_changing_the_time_zone_mid_month_keeps_this_months_usage(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    bo = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)
    await api.use(bo["id"], 50_000, expect=200)
    await api.post(f"/v1/users/{bo['id']}/deactivate", expect=200)

    await api.patch(f"/v1/organizations/{org}", {"time_zone": "Europe/Berlin"}, expect=200)

    assert (await get_user(api, ana["id"]))["inference"]["used"] == 150_000
    assert (await api.balance(org))["inference"]["allocated"] == 250_000
    details = error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")
    assert details["remaining"] == 50_000


# --- time zone changes: one period, one allowance, per calendar month ------------------------


async def test_a_time_zone_change_into_the_next_month_begins_it(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    clock.set(utc("2026-03-31 22:30"))  # March in UTC, 00:30 on 1 April in Berlin
    await api.use(ana["id"], 150_000, expect=200)

    await api.patch(f"/v1/organizations/{org}", {"time_zone": "Europe/Berlin"}, expect=200)

    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-31 22:00")
    assert instant(balance["period_end"]) == utc("2026-04-30 22:00")
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0
    [started] = await journal(api, org, action="period_started")
    assert instant(started["details"]["period_start"]) == utc("2026-03-31 22:00")
    await api.use(ana["id"], 200_000, expect=200)


async def test_a_time_zone_change_back_into_the_previous_month_keeps_this_months_usage(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, time_zone="Europe/Berlin")
    ana = await api.user(org)
    clock.set(utc("2026-03-31 22:30"))  # 00:30 on 1 April in Berlin, still March in UTC
    await api.use(ana["id"], 150_000, expect=200)  # April's usage

    await api.patch(f"/v1/organizations/{org}", {"time_zone": "UTC"}, expect=200)

    # Not March again (its allowance was given): April's period goes on, through UTC April.
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-31 22:00")
    assert instant(balance["period_end"]) == utc("2026-05-01 00:00")
    assert balance["inference"]["used"] == 150_000
    mine = await api.get(f"/v1/users/{ana['id']}/balance")  # the user's view says the same
    assert (mine["period_start"], mine["period_end"]) == (
        balance["period_start"],
        balance["period_end"],
    )
    [started] = await journal(api, org, action="period_started")  # Berlin's April, by time
    assert instant(started["details"]["period_start"]) == utc("2026-03-31 22:00")
    details = error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")
    assert details["remaining"] == 50_000

    clock.set(utc("2026-04-01 00:30"))  # April in UTC too: the same month, not a new one
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 150_000
    error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")

    clock.set(utc("2026-05-01 00:00"))  # May: a new month in UTC
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-05-01 00:00")
    assert instant(balance["period_end"]) == utc("2026-06-01 00:00")


async def test_a_time_zone_change_within_the_month_keeps_its_usage_and_start_moves_only_later(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    await api.use(ana["id"], 150_000, expect=200)

    # Further west, March began later: the period's start moves there.
    await api.patch(f"/v1/organizations/{org}", {"time_zone": "America/New_York"}, expect=200)
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-01 05:00")
    assert instant(balance["period_end"]) == utc("2026-04-01 04:00")  # EDT
    assert balance["inference"]["used"] == 150_000

    # Further east, March began earlier, before this period: its start stays.
    await api.patch(f"/v1/organizations/{org}", {"time_zone": "Asia/Tokyo"}, expect=200)
    balance = await api.balance(org)
    assert instant(balance["period_start"]) == utc("2026-03-01 05:00")
    assert instant(balance["period_end"]) == utc("2026-03-31 15:00")
    assert balance["inference"]["used"] == 150_000
    assert await journal(api, org, action="period_started") == []
    assert await journal(api, org, action="period_reset") == []
    error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")

    clock.set(utc("2026-03-31 15:00"))  # April in Tokyo
    assert (await get_user(api, ana["id"]))["inference"]["used"] == 0


async def test_a_clock_running_behind_does_not_reopen_the_previous_month(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org)
    clock.set(utc("2026-04-01 00:05"))
    await api.use(ana["id"], 150_000, expect=200)

    clock.set(utc("2026-03-31 23:59"))  # another server's clock, a few minutes behind

    assert (await get_user(api, ana["id"]))["inference"]["used"] == 150_000
    assert instant((await api.balance(org))["period_start"]) == utc("2026-04-01 00:00")
    error_of(await api.use(ana["id"], 50_001), 402, "insufficient_tokens")
