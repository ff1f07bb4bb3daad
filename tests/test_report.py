"""Usage reports and run-out forecasts over the API (GET /v1/organizations/{id}/usage-report,
/forecast and GET /v1/users/{id}/forecast), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers import Api, funded_org
from tests.scenarios import error_of, utc
from tokenadmin.clock import FakeClock
from tokenadmin.database import Database
from tokenadmin.organization import service as organization_service
from tokenadmin.report import service as report_service
from tokenadmin.tokens import Kind
from tokenadmin.user import repository as user_repository


async def _report(api: Api, org: str, **params: Any) -> Any:
    return await api.get(f"/v1/organizations/{org}/usage-report", params=params)


def _rows(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (r["date"], *([r["model"]] if report["group_by"] else []), r["inference"], r["training"])
        for r in report["rows"]
    ]


async def _month_end_in_new_york(api: Api, clock: FakeClock) -> tuple[str, dict[str, Any]]:
    """Usage at 23:30 on 31 March and 00:30 on 1 April, New York time (both 1 April in UTC)."""
    org = await funded_org(api, time_zone="America/New_York")
    ana = await api.user(org, "ana@example.com", max_train_tokens=10_000)
    clock.set(utc("2026-04-01 03:30"))
    await api.use(ana["id"], 100, expect=200)
    await api.use(ana["id"], 7, "training", expect=200)
    clock.set(utc("2026-04-01 04:30"))
    await api.use(ana["id"], 200, expect=200)
    return org, ana


async def test_a_report_per_day_buckets_usage_in_the_organizations_zone_across_a_month_end(
    api: Api, clock: FakeClock
) -> None:
    org, ana = await _month_end_in_new_york(api, clock)

    report = await _report(api, org, **{"from": "2026-03-30", "until": "2026-04-02"})

    assert _rows(report) == [
        ("2026-03-30", 0, 0),
        ("2026-03-31", 100, 7),
        ("2026-04-01", 200, 0),
        ("2026-04-02", 0, 0),
    ]
    assert report["rows"][1]["start"] == "2026-03-31T00:00:00-04:00"
    assert (report["from"], report["until"], report["granularity"]) == (
        "2026-03-30",
        "2026-04-02",
        "day",
    )
    assert report["totals"] == {"inference": 300, "training": 7}
    assert (report["user_id"], report["time_zone"]) == (None, "America/New_York")
    # One user's report, named by email or by id, is the same.
    mine = await _report(api, org, user="ANA@example.com", **{"from": "2026-03-31"})
    assert _rows(mine)[:2] == [("2026-03-31", 100, 7), ("2026-04-01", 200, 0)]
    assert mine["user_id"] == ana["id"]
    assert _rows(await _report(api, org, user=ana["id"], **{"from": "2026-03-31"})) == _rows(mine)


async def test_a_report_per_month_covers_whole_months_of_the_organizations_zone(
    api: Api, clock: FakeClock
) -> None:
    org, _ = await _month_end_in_new_york(api, clock)

    report = await _report(
        api, org, granularity="month", **{"from": "2026-02-14", "until": "2026-04-02"}
    )

    assert _rows(report) == [("2026-02", 0, 0), ("2026-03", 100, 7), ("2026-04", 200, 0)]
    assert (report["from"], report["until"]) == ("2026-02-01", "2026-04-30")
    # By default: this month and the twelve before it.
    default = await _report(api, org, granularity="month")
    assert [r["date"] for r in default["rows"]][0::12] == ["2025-04", "2026-04"]
    assert len(default["rows"]) == 13


async def test_a_report_per_model_counts_commits_under_their_reservations_model(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    await api.use(ana["id"], 100, model="large-chat", expect=200)
    await api.use(ana["id"], 50, model="small", expect=200)
    await api.use(ana["id"], 5, expect=200)
    held = await api.post(
        "/v1/reservations",
        {"user": ana["id"], "kind": "inference", "tokens": 500, "model": "large-chat"},
        expect=201,
        idempotency_key="hold-1",
    )
    await api.post(f"/v1/reservations/{held['id']}/commit", {"tokens": 300}, expect=200)
    clock.advance(days=1)
    await api.use(ana["id"], 9, model="small", expect=200)

    report = await _report(api, org, group_by="model", **{"from": "2026-03-15"})

    assert _rows(report) == [
        ("2026-03-15", None, 5, 0),
        ("2026-03-15", "large-chat", 400, 0),
        ("2026-03-15", "small", 50, 0),
        ("2026-03-16", "small", 9, 0),
    ]
    assert report["group_by"] == "model"


async def test_a_report_as_csv_has_a_header_and_a_row_per_bucket(
    api: Api, clock: FakeClock
) -> None:
    org, _ = await _month_end_in_new_york(api, clock)
    path = f"/v1/organizations/{org}/usage-report"
    params = {"from": "2026-03-31", "until": "2026-04-01", "format": "csv"}

    plain = await api.call("GET", path, params=params, expect=200)
    per_model = await api.call("GET", path, params={**params, "group_by": "model"}, expect=200)

    assert plain.headers["content-type"] == "text/csv; charset=utf-8"
    assert "attachment" in plain.headers["content-disposition"]
    assert list(csv.reader(io.StringIO(plain.text))) == [
        ["date", "inference", "training"],
        ["2026-03-31", "100", "7"],
        ["2026-04-01", "200", "0"],
    ]
    assert list(csv.reader(io.StringIO(per_model.text))) == [
        ["date", "model", "inference", "training"],
        ["2026-03-31", "", "100", "7"],
        ["2026-04-01", "", "200", "0"],
    ]


async def test_ranges_too_long_or_reversed_are_refused_with_their_codes(api: Api) -> None:
    org = await funded_org(api)
    path = f"/v1/organizations/{org}/usage-report"

    def params(**p: str) -> dict[str, str]:
        return {("from" if k == "from_" else k): v for k, v in p.items()}

    too_many_days = await api.call(
        "GET", path, params=params(from_="2025-01-01", until="2026-01-02")
    )
    details = error_of(too_many_days, 422, "report_range_too_long")
    assert details["max_days"] == 366
    # 366 days (2024 was a leap year) is the most a report per day spans.
    await api.call("GET", path, params=params(from_="2024-01-01", until="2024-12-31"), expect=200)
    too_many_months = await api.call(
        "GET", path, params=params(granularity="month", from_="2016-01-01", until="2026-01-31")
    )
    assert error_of(too_many_months, 422, "report_range_too_long")["max_months"] == 120
    reversed_ = await api.call("GET", path, params=params(from_="2026-03-10", until="2026-03-01"))
    error_of(reversed_, 422, "report_range_reversed")
    far = await api.call("GET", path, params=params(from_="0001-01-01", until="0001-01-02"))
    error_of(far, 422, "invalid_request")
    # A date is written out: a number is not read as seconds since 1970.
    for number in ("0", "20260301"):
        error_of(await api.call("GET", path, params={"until": number}), 422, "invalid_request")


async def test_another_organization_reads_no_report_nor_forecast(api: Api) -> None:
    org_a = await funded_org(api)
    alice = await api.user(org_a, "alice@a.example")
    await api.use(alice["id"], 1_000, expect=200)
    org_b = await funded_org(api)
    reader_b = api.as_key(await api.key(org_b, "read"))
    admin_b = api.as_key(await api.key(org_b, "admin"))
    usage_a = api.as_key(await api.key(org_a, "usage"))

    for caller in (reader_b, admin_b):
        for path in (
            f"/v1/organizations/{org_a}/usage-report",
            f"/v1/organizations/{org_a}/forecast",
            f"/v1/users/{alice['id']}/forecast",
        ):
            error_of(await caller.call("GET", path), 404, "not_found")
        for ref in (alice["id"], alice["email"]):
            named = await caller.call(
                "GET", f"/v1/organizations/{org_b}/usage-report", params={"user": ref}
            )
            error_of(named, 404, "user_not_found")
    # A metering key of the organization itself does not read reports either.
    error_of(await usage_a.call("GET", f"/v1/organizations/{org_a}/usage-report"), 403, "forbidden")
    # Its own read key does.
    reader_a = api.as_key(await api.key(org_a, "read"))
    assert (await _report(reader_a, org_a))["totals"]["inference"] == 1_000


async def test_a_forecast_at_the_start_of_a_period_shows_how_little_it_rests_on(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    clock.set(utc("2026-04-01 06:00"))  # six hours into April's period

    before = await api.get(f"/v1/users/{ana['id']}/forecast")
    await api.use(ana["id"], 1_000, expect=200)
    after = await api.get(f"/v1/users/{ana['id']}/forecast")

    assert (before["days_observed"], before["hours_observed"]) == (0, 6)
    assert before["inference"] == {
        "remaining": 200_000,
        "used": 0,
        "pace_per_day": 0,
        "runs_out_on": None,
        "days_with_usage": 0,
        "basis": "No usage in 6 hours of this period.",
        "too_little_data": False,
    }
    assert (after["measured_from"], after["measured_until"]) == (
        "2026-04-01T00:00:00Z",
        "2026-04-01T06:00:00Z",
    )
    assert after["period_end"] == "2026-05-01T00:00:00Z"
    # 1,000 in six hours is 4,000 a day: the 199,000 left last past the end of April. A
    # pace of six hours is a guess, and the answer says so.
    assert after["inference"] == {
        "remaining": 199_000,
        "used": 1_000,
        "pace_per_day": 4_000,
        "runs_out_on": None,
        "days_with_usage": 1,
        "basis": "Based on 6 hours of this period — too little to be sure.",
        "too_little_data": True,
    }
    clock.set(utc("2026-04-02 06:00"))
    assert (await api.get(f"/v1/users/{ana['id']}/forecast"))["days_observed"] == 1


async def test_a_forecast_gives_the_day_a_user_runs_out_at_their_pace(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    clock.set(utc("2026-03-02 00:00"))
    await api.use(ana["id"], 50_000, expect=200)
    clock.set(utc("2026-03-03 00:00"))
    await api.use(ana["id"], 50_000, expect=200)
    clock.set(utc("2026-03-11 00:00"))

    forecast = await api.get(f"/v1/users/{ana['id']}/forecast")

    # 100,000 in 10 days is 10,000 a day: the 100,000 left last 10 more days.
    assert forecast["days_observed"] == 10
    assert forecast["inference"] == {
        "remaining": 100_000,
        "used": 100_000,
        "pace_per_day": 10_000,
        "runs_out_on": "2026-03-21T00:00:00Z",
        "days_with_usage": 2,
        "basis": "Based on 10 days of this period, with usage on 2 days.",
        "too_little_data": False,
    }
    assert forecast["training"]["runs_out_on"] is None


async def test_an_organizations_forecast_lists_the_users_who_run_out_soonest_first(
    api: Api, clock: FakeClock
) -> None:
    org = await funded_org(api, inference=2_000_000)
    slow = await api.user(org, "slow@example.com")
    fast = await api.user(org, "fast@example.com")
    mid = await api.user(org, "mid@example.com")
    await api.user(org, "idle@example.com")
    clock.set(utc("2026-03-11 00:00"))
    await api.use(slow["id"], 20_000, expect=200)
    await api.use(fast["id"], 150_000, expect=200)
    await api.use(mid["id"], 100_000, expect=200)

    whole = await api.get(f"/v1/organizations/{org}/forecast")
    listed = await api.get(f"/v1/organizations/{org}/forecast", params={"users": 2})
    rest = await api.get(f"/v1/organizations/{org}/forecast", params={"users": 2, "offset": 2})

    assert whole["users"] == []
    assert whole["users_total"] == 0
    # The organization used 270,000 of 2,000,000 in 10 days: 27,000 a day.
    assert whole["inference"]["used"] == 270_000
    assert whole["inference"]["remaining"] == 2_000_000 - 270_000
    assert whole["inference"]["pace_per_day"] == 27_000
    assert whole["inference"]["days_with_usage"] == 1
    assert listed["users_total"] == 3
    assert [u["email"] for u in listed["users"]] == ["fast@example.com", "mid@example.com"]
    # fast: 50,000 left at 15,000 a day runs out 3 days and 8 hours from now.
    assert listed["users"][0]["runs_out_on"] == "2026-03-14T08:00:00Z"
    assert listed["users"][0]["inference"]["days_with_usage"] is None
    assert [u["email"] for u in rest["users"]] == ["slow@example.com"]
    assert rest["users"][0]["runs_out_on"] is None
    too_many = await api.call("GET", f"/v1/organizations/{org}/forecast", params={"users": 1001})
    error_of(too_many, 422, "invalid_request")


async def test_a_deactivated_user_runs_out_of_nothing(api: Api, clock: FakeClock) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com")
    await api.use(ana["id"], 10_000, expect=200)
    await api.post(f"/v1/users/{ana['id']}/deactivate", expect=200)

    forecast = await api.get(f"/v1/users/{ana['id']}/forecast")

    assert forecast["status"] == "deactivated"
    assert forecast["inference"]["remaining"] == 0
    assert forecast["inference"]["runs_out_on"] is None


async def test_the_dashboards_forecast_from_the_cached_balance_equals_the_journals(
    api: Api, db: Database, clock: FakeClock
) -> None:
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com", max_train_tokens=10_000)
    clock.set(utc("2026-03-20 12:00"))
    await api.use(ana["id"], 40_000, expect=200)
    await api.use(ana["id"], 900, "training", expect=200)
    clock.set(utc("2026-03-22 08:00"))

    async def both(session: AsyncSession) -> tuple[Any, Any]:
        found = await organization_service.get(session, uuid.UUID(org))
        now = clock.now()
        counted = await report_service.org_forecast(session, found, now)
        cached = await report_service.org_forecast(session, found, now, count_days=False)
        return counted, cached

    counted, cached = await db.read(both)
    for kind in Kind:
        assert counted.kinds[kind].used == cached.kinds[kind].used > 0
        assert counted.kinds[kind].runs_out_on == cached.kinds[kind].runs_out_on
        assert counted.kinds[kind].pace_per_day == cached.kinds[kind].pace_per_day
        assert (counted.kinds[kind].days_with_usage, cached.kinds[kind].days_with_usage) == (
            1,
            None,
        )


async def test_the_charts_usage_spans_30_days_and_12_months_zero_filled_across_periods(
    api: Api, db: Database, clock: FakeClock
) -> None:
    clock.set(utc("2026-02-13 12:00"))
    org = await funded_org(api)
    ana = await api.user(org, "ana@example.com", max_train_tokens=1_000)
    bo = await api.user(org, "bo@example.com")
    await api.use(ana["id"], 1_000, model="large-chat", expect=200)  # 31 days back: out
    clock.set(utc("2026-02-20 12:00"))
    await api.use(ana["id"], 100, model="large-chat", expect=200)
    clock.set(utc("2026-03-01 01:00"))  # a new period
    await api.use(ana["id"], 7, "training", expect=200)
    clock.set(utc("2026-03-10 09:00"))
    await api.use(ana["id"], 50, model="small", expect=200)
    await api.use(bo["id"], 20, expect=200)
    clock.set(utc("2026-03-15 12:00"))

    async def recent(session: AsyncSession, email: str) -> report_service.RecentUsage:
        found = await organization_service.get(session, uuid.UUID(org))
        user = (await user_repository.find_by_refs(session, found.id, [email]))[email]
        return await report_service.recent_usage(session, found, clock.now(), user)

    mine = await db.read(lambda session: recent(session, "ana@example.com"))

    days = [f"{d:%m-%d}" for d in mine.daily.buckets]
    assert (len(days), days[0], days[-1]) == (30, "02-14", "03-15")
    inference = dict(zip(days, mine.daily.series(Kind.inference), strict=True))
    assert {day: n for day, n in inference.items() if n} == {"02-20": 100, "03-10": 50}
    assert dict(zip(days, mine.daily.series(Kind.training), strict=True))["03-01"] == 7
    months = [f"{m:%Y-%m}" for m in mine.monthly.buckets]
    assert (len(months), months[0], months[-1]) == (12, "2025-04", "2026-03")
    assert mine.monthly.series(Kind.inference)[-2:] == [1_100, 50]
    assert sum(mine.monthly.series(Kind.inference)) == 1_150
    # Per model, the last 30 days: most used first, usage naming none last.
    assert [(m.model, m.tokens[Kind.inference], m.tokens[Kind.training]) for m in mine.models] == [
        ("large-chat", 100, 0),
        ("small", 50, 0),
        (None, 0, 7),
    ]
    # Usage that names no model has no breakdown per model.
    theirs = await db.read(lambda session: recent(session, "bo@example.com"))
    assert theirs.models == []
    assert sum(theirs.daily.series(Kind.inference)) == 20
