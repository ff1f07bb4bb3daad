"""Amounts as people type them: "250000", "250,000", "250K", "1.5M" → an exact int.

The CLI, CSV imports and the dashboard all read amounts here. Parsing goes through
`decimal.Decimal`, never a float, so "1.000001M" is exactly 1,000,001 and anything that
is not a whole number of tokens is refused rather than rounded.
"""

from __future__ import annotations

import re
from decimal import Decimal, Inexact, localcontext

from tokenadmin.errors import InvalidRequest
from tokenadmin.tokens import MAX_AMOUNT, fmt

SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}
"""Multipliers: K thousand, M million, B billion (case does not matter)."""

# Digits are spelled [0-9]: `\d` would also accept other scripts' digits. A comma only
# groups thousands ("250,000"), so "1,5M" (a decimal comma) is refused, never misread.
_AMOUNT = re.compile(
    r"(?P<number>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"\s*(?P<suffix>[kKmMbB]?)"
)
_EXAMPLES = "250000, 250,000, 250K or 1.5M"
MAX_LENGTH = 64


def parse_amount(text: str, *, positive: bool = False) -> int:
    """Read a whole number of tokens from 0 (1 when `positive`) to 2^53.

    Raises ValueError with a message a person can act on.
    """
    cleaned = text.strip()
    if not cleaned:
        raise ValueError(f"An amount is required, such as {_EXAMPLES}.")
    if len(cleaned) > MAX_LENGTH:
        raise ValueError(f"That is {len(cleaned)} characters; an amount has at most {MAX_LENGTH}.")
    if cleaned.isascii() and cleaned.isdigit():  # the common case, e.g. a CSV column
        return _checked(cleaned, int(cleaned), positive)
    if cleaned.startswith("-"):
        raise ValueError(f"'{cleaned}' is negative; amounts are 0 or more tokens.")
    match = _AMOUNT.fullmatch(cleaned)
    if match is None:
        raise ValueError(f"'{cleaned}' is not an amount; write it like {_EXAMPLES}.")
    if match["fraction"] is not None and len(match["fraction"]) == 3 and not match["suffix"]:
        # "250.000" groups thousands where a point does (de-DE: 250,000) and is a fraction
        # where it doesn't (250): never guessed, since the wrong guess is 1,000 times off.
        whole = match["number"]
        raise ValueError(
            f"'{cleaned}' is ambiguous: {whole} or {whole},{match['fraction']}? Write it"
            f" without the point ({whole}{match['fraction']}) or with a comma"
            f" ({whole},{match['fraction']})."
        )
    digits = match["number"].replace(",", "")
    if match["fraction"]:
        digits += "." + match["fraction"]
    with localcontext() as exact:
        # Enough precision for every digit, and a trap in case any rounding would happen.
        exact.prec = len(digits) + 12
        exact.traps[Inexact] = True
        value = Decimal(digits) * SUFFIXES[match["suffix"].lower()]
        if value != value.to_integral_value():
            raise ValueError(
                f"'{cleaned}' is {value.normalize():f} tokens; amounts are whole tokens."
            )
    return _checked(cleaned, int(value), positive)


def _checked(cleaned: str, amount: int, positive: bool) -> int:
    if amount > MAX_AMOUNT:
        raise ValueError(f"'{cleaned}' is more than the largest amount, {fmt(MAX_AMOUNT)}.")
    if positive and amount == 0:
        raise ValueError("The amount must be at least 1 token.")
    return amount


def check_amount(amount: int, *, positive: bool = False, field: str | None = None) -> int:
    """SPEC rule 8 for an amount a service is handed: a whole number of tokens from 0 (1 when
    `positive`) to 2^53, else 422 invalid_amount naming `field`."""
    low = 1 if positive else 0
    if isinstance(amount, bool) or not isinstance(amount, int) or not low <= amount <= MAX_AMOUNT:
        raise InvalidRequest(
            f"{field + ': ' if field else ''}amounts are whole numbers of tokens from {low} to"
            f" {fmt(MAX_AMOUNT)}.",
            code="invalid_amount",
            details={"field": field} if field else None,
        )
    return amount
