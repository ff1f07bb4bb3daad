"""`tokenadmin report usage` and `tokenadmin report forecast`: the API's report and forecast
from the same service, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

from tests.cli.conftest import Tokenadmin


def _used(tokenadmin: Tokenadmin) -> None:
    tokenadmin.user(tokenadmin.org(), "ana@example.com")
    for tokens, model in (("1500", "large-chat"), ("500", "small"), ("250", None)):
        extra = ("--model", model) if model else ()
        tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", tokens, *extra)


def test_report_usage_per_day_as_a_table_json_and_csv(tokenadmin: Tokenadmin) -> None:
    _used(tokenadmin)
    today = datetime.now(UTC).date().isoformat()

    shown = tokenadmin("report", "usage", "--org", "Acme", "--from", today, "--until", today)
    as_json = tokenadmin.json("report", "usage", "--org", "Acme", "--user", "ana@example.com")
    as_csv = tokenadmin("report", "usage", "--org", "Acme", "--from", today, "--csv")

    assert "2,250" in shown.stdout
    assert "Total: 2,250 inference, 0 training." in shown.stdout
    assert as_json["totals"] == {"inference": 2_250, "training": 0}
    assert as_json["email"] == "ana@example.com"
    assert as_json["until"] == today
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["date", "inference", "training"],
        [today, "2250", "0"],
    ]


def test_report_usage_by_model_and_per_month(tokenadmin: Tokenadmin) -> None:
    _used(tokenadmin)
    today = datetime.now(UTC).date()

    by_model = tokenadmin(
        "report", "usage", "--org", "Acme", "--by-model", "--from", today.isoformat(), "--csv"
    )
    monthly = tokenadmin.json("report", "usage", "--org", "Acme", "--granularity", "month")

    assert list(csv.reader(io.StringIO(by_model.stdout)))[1:] == [
        [today.isoformat(), "", "250", "0"],
        [today.isoformat(), "large-chat", "1500", "0"],
        [today.isoformat(), "small", "500", "0"],
    ]
    assert len(monthly["rows"]) == 13
    assert monthly["rows"][-1] == {
        "date": today.strftime("%Y-%m"),
        "start": monthly["rows"][-1]["start"],
        "model": None,
        "inference": 2_250,
        "training": 0,
    }


def test_report_usage_refuses_a_range_too_long_or_a_bad_date(tokenadmin: Tokenadmin) -> None:
    tokenadmin.org()

    long = tokenadmin(
        "report", "usage", "--org", "Acme", "--from", "2024-01-01", "--until", "2025-06-01",
        expect=2,
    )  # fmt: skip
    bad = tokenadmin("report", "usage", "--org", "Acme", "--from", "yesterday", expect=2)
    reversed_ = tokenadmin(
        "report", "usage", "--org", "Acme", "--from", "2026-03-10", "--until", "2026-03-01",
        "--json", expect=2,
    )  # fmt: skip

    assert "error: report_range_too_long:" in long.stderr
    assert "--from: 'yesterday' is not a date" in bad.stderr
    assert json.loads(reversed_.stdout)["error"]["code"] == "report_range_reversed"


def test_report_forecast_of_a_user_and_of_the_organization(tokenadmin: Tokenadmin) -> None:
    _used(tokenadmin)

    mine = tokenadmin.json("report", "forecast", "--user", "ana@example.com")
    whole = tokenadmin.json("report", "forecast", "--org", "Acme", "--users", "5")
    shown = tokenadmin("report", "forecast", "--org", "Acme", "--users", "5")

    assert mine["email"] == "ana@example.com"
    assert mine["inference"]["used"] == 2_250
    assert mine["inference"]["remaining"] == 200_000 - 2_250
    assert mine["inference"]["days_with_usage"] == 1
    assert mine["training"]["days_with_usage"] == 0
    assert mine["days_observed"] >= 0
    assert whole["inference"]["used"] == 2_250
    assert [u["email"] for u in whole["users"]] == ["ana@example.com"]
    assert whole["users_total"] == 1
    assert "days with usage" in shown.stdout
    assert f"Inference: {whole['inference']['basis']}" in shown.stdout
    assert "ana@example.com" in shown.stdout
    nobody = tokenadmin("report", "forecast", expect=2)
    assert "Name an organization (--org) or a user (--user)." in nobody.stderr
