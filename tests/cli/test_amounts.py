from __future__ import annotations

import pytest

from tokenadmin.amounts import parse_amount
from tokenadmin.tokens import MAX_AMOUNT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250000", 250_000),
        ("250,000", 250_000),
        ("1,234,567", 1_234_567),
        ("250K", 250_000),
        ("250k", 250_000),
        ("1.5M", 1_500_000),
        ("2m", 2_000_000),
        ("1.25k", 1_250),
        ("1.000001M", 1_000_001),
        ("0.5k", 500),
        ("2B", 2_000_000_000),
        ("1,000.5k", 1_000_500),
        ("  1.5 M ", 1_500_000),
        ("1.0", 1),
        ("250.0", 250),
        ("1.500K", 1_500),
        ("0", 0),
        ("9007199254740992", MAX_AMOUNT),
    ],
)
def test_reads_amounts_as_people_write_them(text: str, expected: int) -> None:
    assert parse_amount(text) == expected
    assert type(parse_amount(text)) is int


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "required"),
        ("   ", "required"),
        ("-5", "negative"),
        ("-1.5M", "negative"),
        ("1.5", "whole tokens"),
        # A point before three digits groups thousands in much of Europe: refused, not read
        # as 250 (nor as 250,000).
        ("250.000", "ambiguous"),
        ("1.500", "ambiguous"),
        ("1,250.000", "ambiguous"),
        ("1.0000005K", "whole tokens"),
        ("0.0001k", "whole tokens"),
        # Past the 28 digits of Decimal's default precision: must not round to a whole number.
        ("1.00000000000000000000000000001K", "whole tokens"),
        ("9007199254740993", "largest amount"),
        ("9.1e15", "not an amount"),
        ("10000000000000000", "largest amount"),
        ("1e6", "not an amount"),
        ("1,5M", "not an amount"),
        ("1,00", "not an amount"),
        ("12,34,567", "not an amount"),
        ("+5", "not an amount"),
        ("K", "not an amount"),
        (".5k", "not an amount"),
        ("1.5kk", "not an amount"),
        ("5 tokens", "not an amount"),
        ("١٢٣", "not an amount"),
        ("NaN", "not an amount"),
        ("inf", "not an amount"),
        ("9" * 100, "at most"),
    ],
)
def test_refuses_what_is_not_a_whole_amount(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(text)


def test_positive_refuses_zero() -> None:
    assert parse_amount("1", positive=True) == 1
    with pytest.raises(ValueError, match="at least 1"):
        parse_amount("0", positive=True)
    with pytest.raises(ValueError, match="at least 1"):
        parse_amount("0.0K", positive=True)


def test_error_names_the_exact_fraction() -> None:
    with pytest.raises(ValueError, match=r"1000\.0005 tokens"):
        parse_amount("1.0000005K")
