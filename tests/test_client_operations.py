"""The client's distribution, forecast, usage report, token request and user CSV operations,
through the async client against the app (SQLite and PostgreSQL), and what the sync client
sends for them."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import httpx
import pytest
from fastapi import FastAPI

from tests.client_support import async_client, funded, scripted
from tokenadmin.client import (
    AsyncClient,
    Conflict,
    DistributionOut,
    InvalidRequest,
    KindRule,
    NotFound,
    OrganizationOut,
    TokenAdminAPIError,
    UserOut,
)
from tokenadmin.clock import FakeClock


@pytest.fixture
async def tokens(app: FastAPI, operator_key: str) -> AsyncIterator[AsyncClient]:
    async with async_client(app, operator_key) as client:
        yield client


async def _org_of_three(tokens: AsyncClient) -> tuple[OrganizationOut, list[UserOut]]:
    """1,000,000 inference and 100,000 training tokens; three users with the minimum of
    200,000 Max Tokens: a balance of 400,000 and 100,000."""
    org = await funded(tokens)
    users = [
        await tokens.create_user(org.id, f"{name}@example.com", name.title())
        for name in ("ana", "bo", "cy")
    ]
    return org, users


async def _allowances(tokens: AsyncClient, users: list[UserOut]) -> list[tuple[int, int]]:
    stored = [await tokens.get_user(u.id) for u in users]
    return [(u.max_tokens, u.max_train_tokens) for u in stored]


# --- distribution -----------------------------------------------------------------------------


async def test_a_distribution_is_previewed_then_applied_with_its_token_both_kinds_at_once(
    tokens: AsyncClient,
) -> None:
    org, users = await _org_of_three(tokens)
    share = KindRule(method="percent", percent=50, maximum=50_000)
    fixed = {"method": "fixed", "amount": 10_000, "minimum": 20_000}

    preview = await tokens.preview_distribution(org.id, inference=share, training=fixed)

    assert isinstance(preview, DistributionOut)
    assert (preview.applied, preview.accepted, preview.users) == (False, True, 3)
    assert preview.kinds["inference"].per_user == 50_000  # 50% of 400,000 / 3, capped
    assert preview.kinds["training"].per_user == 20_000  # 10,000, raised to the minimum
    assert preview.kinds["training"].balance_after == 40_000
    assert await _allowances(tokens, users) == [(200_000, 0)] * 3

    applied = await tokens.distribute(
        org.id,
        inference=share,
        training=fixed,
        reason="Q3",
        preview_token=preview.preview_token,
    )

    assert applied.applied
    assert applied.kinds == preview.kinds
    assert await _allowances(tokens, users) == [(250_000, 20_000)] * 3
    balance = await tokens.get_balance(org.id)
    assert (balance.inference.balance, balance.training.balance) == (250_000, 40_000)
    entries = (await tokens.list_journal(org.id, action="allowance_changed")).entries
    assert {e.reason for e in entries[:6]} == {
        "Distribution (inference: percent, training: fixed): Q3"
    }


async def test_a_distribution_to_chosen_users_named_by_id_or_email(tokens: AsyncClient) -> None:
    org, (ana, bo, cy) = await _org_of_three(tokens)

    applied = await tokens.distribute(
        org.id, inference={"method": "equal"}, users=[ana.id, "BO@example.com"]
    )

    assert applied.users == 2
    assert await _allowances(tokens, [ana, bo, cy]) == [(400_000, 0), (400_000, 0), (200_000, 0)]


async def test_a_stale_preview_raises_a_conflict_and_changes_nothing(tokens: AsyncClient) -> None:
    org, users = await _org_of_three(tokens)
    rule = KindRule(method="fixed", amount=10_000)
    preview = await tokens.preview_distribution(org.id, inference=rule)
    await tokens.update_user(users[1].id, max_tokens=210_000)

    with pytest.raises(Conflict) as stale:
        await tokens.distribute(org.id, inference=rule, preview_token=preview.preview_token)

    assert (stale.value.status, stale.value.code) == (409, "preview_stale")
    assert await _allowances(tokens, users) == [(200_000, 0), (210_000, 0), (200_000, 0)]
    again = await tokens.preview_distribution(org.id, inference=rule)
    done = await tokens.distribute(org.id, inference=rule, preview_token=again.preview_token)
    assert done.applied


async def test_a_distribution_with_a_refused_row_raises_and_saves_nothing(
    tokens: AsyncClient,
) -> None:
    org, users = await _org_of_three(tokens)
    too_much = {"method": "fixed", "amount": 50_000}  # 150,000 of a 100,000 balance

    preview = await tokens.preview_distribution(org.id, training=too_much)
    assert not preview.accepted
    assert {(r["code"], r["kind"]) for r in preview.refused} == {("exceeds_balance", "training")}
    with pytest.raises(InvalidRequest) as refused:
        await tokens.distribute(org.id, training=too_much, preview_token=preview.preview_token)

    assert refused.value.code == "allowance_change_refused"
    # Refusing one of the three equal raises (the last row) is enough; only it is named.
    assert len(refused.value.details["refused"]) == 1
    assert await _allowances(tokens, users) == [(200_000, 0)] * 3
    with pytest.raises(InvalidRequest) as inconsistent:
        await tokens.preview_distribution(org.id, inference={"method": "fixed"})
    assert inconsistent.value.status == 422


# --- forecasts and usage reports --------------------------------------------------------------


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


async def test_forecasts_of_a_user_and_of_the_organization(
    tokens: AsyncClient, clock: FakeClock
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    ben = await tokens.create_user(org.id, "ben@example.com", "Ben")
    clock.set(_at("2026-03-15 12:00"))
    await tokens.record_usage(ana.id, "inference", 100_000)
    await tokens.record_usage(ben.id, "inference", 10_000)
    clock.set(_at("2026-03-16 12:00"))
    await tokens.record_usage(ana.email, "inference", 50_000)
    clock.set(_at("2026-03-21 00:00"))

    mine = await tokens.get_user_forecast(ana.id)

    # 150,000 in the 20 days since the period began: 7,500 a day; 50,000 left.
    assert (mine.email, mine.days_observed) == ("ana@example.com", 20)
    assert mine.measured_from == _at("2026-03-01 00:00")
    assert (mine.inference.used, mine.inference.remaining) == (150_000, 50_000)
    assert (mine.inference.pace_per_day, mine.inference.days_with_usage) == (7_500, 2)
    assert mine.inference.runs_out_on is not None
    assert mine.inference.runs_out_on.date() == date(2026, 3, 27)
    assert mine.training.runs_out_on is None

    whole = await tokens.get_forecast(org.id)
    assert (whole.inference.used, whole.users, whole.users_total) == (160_000, [], 0)
    soonest = await tokens.get_forecast(org.id, users=1)
    assert [u.email for u in soonest.users] == ["ana@example.com"]
    assert soonest.users_total == 2
    rest = await tokens.get_forecast(org.id, users=1, offset=1)
    assert [u.email for u in rest.users] == ["ben@example.com"]


async def test_a_usage_report_as_json_and_as_csv_per_day_and_model(
    tokens: AsyncClient, clock: FakeClock
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana", max_train_tokens=10_000)
    await tokens.create_user(org.id, "ben@example.com", "Ben")
    await tokens.record_usage(ana.id, "inference", 100, model="large")
    await tokens.record_usage(ana.id, "training", 7)
    await tokens.record_usage("ben@example.com", "inference", 1_000, model="small")
    clock.advance(days=1)
    await tokens.record_usage(ana.id, "inference", 20, model="large")
    first, last = date(2026, 3, 15), date(2026, 3, 16)

    report = await tokens.get_usage_report(org.id, from_=first, until=last)
    by_model = await tokens.get_usage_report(
        org.id, group_by="model", user=ana.email, from_=first, until=last
    )

    assert (report.from_, report.until, report.granularity) == (first, last, "day")
    assert [(r.date, r.inference, r.training) for r in report.rows] == [
        ("2026-03-15", 1_100, 7),
        ("2026-03-16", 20, 0),
    ]
    assert report.totals == {"inference": 1_120, "training": 7}
    assert (by_model.user_id, by_model.group_by) == (ana.id, "model")
    assert [(r.date, r.model, r.inference, r.training) for r in by_model.rows] == [
        ("2026-03-15", None, 0, 7),
        ("2026-03-15", "large", 100, 0),
        ("2026-03-16", "large", 20, 0),
    ]
    monthly = await tokens.get_usage_report(org.id, granularity="month", user=ana.id)
    assert monthly.rows[-1].date == "2026-03"
    assert monthly.rows[-1].inference == 120

    text = await tokens.usage_report_csv(
        org.id, group_by="model", user=ana.id, from_=first, until=last
    )

    assert list(csv.reader(io.StringIO(text))) == [
        ["date", "model", "inference", "training"],
        ["2026-03-15", "", "0", "7"],
        ["2026-03-15", "large", "100", "0"],
        ["2026-03-16", "large", "20", "0"],
    ]
    with pytest.raises(InvalidRequest) as reversed_range:
        await tokens.get_usage_report(org.id, from_=date(2026, 3, 16), until=date(2026, 3, 1))
    assert reversed_range.value.code == "report_range_reversed"


# --- token requests ---------------------------------------------------------------------------


async def test_a_request_is_asked_listed_and_approved_for_another_amount(
    app: FastAPI, tokens: AsyncClient
) -> None:
    org = await funded(tokens)
    mia = await tokens.create_user(org.id, "mia@example.com", "Mia")
    backend = await tokens.create_api_key(org.id, "backend", ["usage"])

    async with async_client(app, backend.key) as platform:
        asked = await platform.ask_for_tokens(
            "inference", 300_000, "a fine-tuning run", user="MIA@example.com"
        )
        assert [r.id for r in (await platform.list_user_token_requests(mia.id)).requests] == [
            asked.id
        ]

    assert (asked.state, asked.user_id, asked.amount) == ("pending", mia.id, 300_000)
    assert (asked.reason, asked.decided_at, asked.approved_amount) == (
        "a fine-tuning run",
        None,
        None,
    )
    pending = await tokens.list_token_requests(org.id)
    assert ([r.id for r in pending.requests], pending.total) == ([asked.id], 1)
    assert (await tokens.list_token_requests(org.id, state="approved")).total == 0
    assert (await tokens.get_token_request(asked.id)).state == "pending"
    assert (await tokens.get_user(mia.id)).max_tokens == 200_000, "asking moves nothing"

    approved = await tokens.approve_token_request(asked.id, amount=250_000, note="250K for now")

    assert (approved.state, approved.approved_amount, approved.note) == (
        "approved",
        250_000,
        "250K for now",
    )
    assert approved.version == asked.version + 1
    assert (await tokens.get_user(mia.id)).max_tokens == 450_000
    assert (await tokens.get_balance(org.id)).inference.allocated == 450_000
    listed = await tokens.list_token_requests(org.id, state="any", user_id=mia.id, kind="inference")
    assert [(r.id, r.state) for r in listed.requests] == [(asked.id, "approved")]
    with pytest.raises(Conflict) as twice:
        await tokens.deny_token_request(asked.id, "no")
    assert (twice.value.code, twice.value.details["state"]) == (
        "request_already_decided",
        "approved",
    )


async def test_the_auto_approval_rule_is_set_and_approves_a_request_at_once(
    tokens: AsyncClient,
) -> None:
    org = await funded(tokens)
    mia = await tokens.create_user(org.id, "mia@example.com", "Mia")
    updated = await tokens.update_organization(
        org.id,
        auto_approve_enabled=True,
        auto_approve_max_amount=100_000,
        auto_approve_max_per_period=1,
        auto_approve_max_allocated_percent=100,
    )
    assert (updated.auto_approve_enabled, updated.auto_approve_max_amount) == (True, 100_000)
    with pytest.raises(InvalidRequest):
        await tokens.update_organization(org.id, auto_approve_max_allocated_percent=101)

    asked = await tokens.ask_for_tokens("inference", 100_000, "evals", user=mia.id)

    assert (asked.state, asked.decided_by) == ("approved", "system:auto-approval")
    assert (await tokens.get_user(mia.id)).max_tokens == 300_000
    second = await tokens.ask_for_tokens("inference", 100_000, "more evals", user=mia.id)
    assert second.state == "pending", "one automatic approval per user and period"


async def test_a_request_is_denied_with_a_note_or_withdrawn(tokens: AsyncClient) -> None:
    org = await funded(tokens)
    mia = await tokens.create_user(org.id, "mia@example.com", "Mia")
    first = await tokens.ask_for_tokens("training", 5_000, "evaluation", user=mia.id)
    second = await tokens.ask_for_tokens("inference", 1_000, "a demo", user=mia.email)

    denied = await tokens.deny_token_request(first.id, "not this quarter")
    withdrawn = await tokens.withdraw_token_request(second.id)

    assert (denied.state, denied.note) == ("denied", "not this quarter")
    assert withdrawn.state == "withdrawn"
    mine = await tokens.list_user_token_requests(mia.id)
    assert sorted(r.state for r in mine.requests) == ["denied", "withdrawn"]
    assert [
        r.id for r in (await tokens.list_user_token_requests(mia.id, state="denied")).requests
    ] == [first.id]
    assert (await tokens.list_token_requests(org.id)).total == 0
    user = await tokens.get_user(mia.id)
    assert (user.max_tokens, user.max_train_tokens) == (200_000, 0)
    with pytest.raises(NotFound):
        await tokens.get_token_request("7f4c8a8e-0000-4000-8000-000000000001")


# --- the user table as CSV --------------------------------------------------------------------


async def test_the_user_table_is_exported_edited_and_imported_back_after_a_preview(
    tokens: AsyncClient,
) -> None:
    org = await funded(tokens, inference=2_000_000)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    await tokens.create_user(org.id, "ben@example.com", "Ben", max_tokens=300_000)
    await tokens.record_usage(ana.id, "inference", 1_500)

    exported = await tokens.export_users_csv(org.id)

    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(r["email"], r["max_tokens"], r["inference_used"]) for r in rows] == [
        ("ana@example.com", "200000", "1500"),
        ("ben@example.com", "300000", "0"),
    ]
    edited = exported.replace(
        "ana@example.com,Ana,member,active,200000", "ana@example.com,Ana B,member,active,250000"
    )
    edited += "cy@example.com,Cy,admin,,,,,,\n"

    preview = await tokens.import_users_csv(org.id, edited, dry_run=True)

    assert (preview.dry_run, preview.applied, preview.accepted) == (True, False, True)
    assert [(n.line, n.email, n.max_tokens) for n in preview.new_users] == [
        (4, "cy@example.com", 200_000)
    ]
    assert sorted((c.field, c.before, c.after) for c in preview.changes) == [
        ("max_tokens", 200_000, 250_000),
        ("name", "Ana", "Ana B"),
    ]
    assert (await tokens.list_users(org.id)).total == 2

    applied = await tokens.import_users_csv(org.id, edited)

    assert (applied.applied, applied.accepted) == (True, True)
    stored = await tokens.get_user(ana.id)
    assert (stored.name, stored.max_tokens) == ("Ana B", 250_000)
    assert (await tokens.list_users(org.id)).total == 3
    assert (await tokens.get_balance(org.id)).inference.allocated == 750_000


async def test_an_import_with_refused_rows_raises_listing_every_line_and_saves_nothing(
    tokens: AsyncClient,
) -> None:
    org = await funded(tokens)
    ana = await tokens.create_user(org.id, "ana@example.com", "Ana")
    text = "email,name,max_tokens\nana@example.com,,10\nnew@example.com,New,\nbad,,1.5\n"

    with pytest.raises(InvalidRequest) as refused:
        await tokens.import_users_csv(org.id, text)

    assert refused.value.code == "import_refused"
    assert [(r["line"], r["code"]) for r in refused.value.details["refused"]] == [
        (2, "below_minimum"),
        (4, "invalid_amount"),
    ]
    assert (await tokens.get_user(ana.id)).max_tokens == 200_000
    assert (await tokens.list_users(org.id)).total == 1
    preview = await tokens.import_users_csv(org.id, text, dry_run=True)
    assert (preview.accepted, [r.line for r in preview.refused]) == (False, [2, 4])


# --- what the sync client sends ---------------------------------------------------------------


def test_rules_dates_and_the_csv_format_are_sent_as_the_api_names_them() -> None:
    answers = [httpx.Response(200, json={}), httpx.Response(200, text="date,inference\n")]
    client, script, _ = scripted(*answers)
    with pytest.raises(TokenAdminAPIError) as unread:  # the scripted answer is no preview
        client.preview_distribution(
            "org-1",
            inference=KindRule(method="fixed", amount=5),
            training={"method": "equal"},
            users=["ana@example.com"],
        )
    assert unread.value.code == "unexpected_response"
    assert client.usage_report_csv("org-1", from_=date(2026, 3, 1), group_by="model") == (
        "date,inference\n"
    )

    preview, report = script.requests
    assert preview.url.path == "/v1/organizations/org-1/distribution/preview"
    assert json.loads(preview.content) == {
        "inference": {"method": "fixed", "amount": 5, "minimum": 0},
        "training": {"method": "equal"},
        "users": ["ana@example.com"],
    }
    assert preview.headers["idempotency-key"]
    assert report.url.path == "/v1/organizations/org-1/usage-report"
    assert dict(report.url.params) == {"from": "2026-03-01", "group_by": "model", "format": "csv"}
