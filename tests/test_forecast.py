"""The run-out forecast's arithmetic, shared by the API, the CLI, a user's page, /me and the
organization's home (report/service.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tokenadmin.report.service import HORIZON, Forecast, Window, basis, forecast

START = datetime(2025, 3, 1, tzinfo=UTC)
END = datetime(2025, 4, 1, tzinfo=UTC)
NOW = START + timedelta(days=10)
ELAPSED = NOW - START


def test_no_usage_makes_no_pace_and_no_date() -> None:
    assert forecast(0, ELAPSED, 1_000, NOW, END) == Forecast(0, None)
    assert forecast(500, timedelta(0), 1_000, NOW, END) == Forecast(0, None)


def test_a_pace_that_uses_the_rest_before_the_period_ends_gives_that_day() -> None:
    # 100,000 in 10 days is 10,000 a day: 50,000 more lasts 5 days.
    result = forecast(100_000, ELAPSED, 50_000, NOW, END)
    assert result == Forecast(10_000, NOW + timedelta(days=5))


def test_a_pace_that_lasts_past_the_end_of_the_period_does_not_run_out() -> None:
    # 10,000 a day for the 21 days left uses 210,000 of 1,000,000.
    assert forecast(100_000, ELAPSED, 1_000_000, NOW, END) == Forecast(10_000, None)


def test_running_out_exactly_when_the_period_ends_is_not_running_out() -> None:
    left = END - NOW  # 21 days
    exactly = forecast(100_000, ELAPSED, 10_000 * left.days, NOW, END)
    assert exactly == Forecast(10_000, None)
    one_less = forecast(100_000, ELAPSED, 10_000 * left.days - 1, NOW, END)
    assert one_less.runs_out_on is not None
    assert one_less.runs_out_on < END


def test_nothing_left_runs_out_now() -> None:
    assert forecast(100_000, ELAPSED, -5, NOW, END) == Forecast(10_000, NOW)


def test_without_periods_a_date_within_ten_years_is_given_and_none_beyond() -> None:
    soon = forecast(100_000, ELAPSED, 3_000_000, NOW, None)
    assert soon == Forecast(10_000, NOW + timedelta(days=300))
    # 10^12 at 10,000 a day would be 10^8 days, past what a date can hold.
    assert forecast(100_000, ELAPSED, 10**12, NOW, None) == Forecast(10_000, None)


def test_the_pace_is_rounded_down_to_whole_tokens_a_day() -> None:
    # 10 tokens in 3 days is 3.33 a day: 3; the date stays exact (what is left over 10 tokens
    # takes 3 days more per 10 left).
    result = forecast(10, timedelta(days=3), 10, NOW, END)
    assert result == Forecast(3, NOW + timedelta(days=3))


def test_beyond_the_horizon_even_within_a_period_is_no_date() -> None:
    far = NOW + HORIZON + timedelta(days=1)
    assert forecast(1, timedelta(days=1), 10**6, NOW, far).runs_out_on is None


def test_days_observed_counts_whole_days_measured() -> None:
    assert Window(START, START + timedelta(hours=23), END).days_observed == 0
    assert Window(START, START + timedelta(days=1), END).days_observed == 1
    assert Window(START, NOW, END).days_observed == 10


def test_the_basis_says_how_much_usage_a_forecast_rests_on_and_when_it_is_too_little() -> None:
    early = Window(START, START + timedelta(hours=5, minutes=59), END)
    assert early.too_short
    assert basis(early, 1_000, 1) == "Based on 5 hours of this period — too little to be sure."
    first_minutes = Window(START, START + timedelta(minutes=20), END)
    assert basis(first_minutes, 10, 1) == (
        "Based on under an hour of this period — too little to be sure."
    )
    assert basis(first_minutes, 0, 0) == "No usage in under an hour of this period."
    one_day = Window(START, START + timedelta(days=1, hours=2), END)
    assert not one_day.too_short
    assert basis(one_day, 10, 2) == "Based on 1 day of this period, with usage on 2 days."
    assert basis(Window(START, NOW, END), 10, 1) == (
        "Based on 10 days of this period, with usage on 1 day."
    )
    # An organization's list of users does not count days; without periods, the last 30.
    assert basis(Window(START, NOW, END), 10, None) == "Based on 10 days of this period."
    prepaid = Window(NOW - timedelta(days=30), NOW, None)
    assert basis(prepaid, 10, 4) == "Based on the last 30 days, with usage on 4 days."
