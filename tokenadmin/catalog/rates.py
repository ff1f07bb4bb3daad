"""Rates as exact decimals, parsed the same way by every interface (the service, the API's
bodies, the CLI, the dashboard and the Python client, which imports this module alone)."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from tokenadmin.errors import InvalidRate

RATE_PLACES = 6
"""A rate has at most this many decimal places (0.000001 is the smallest above zero)."""
MAX_RATE = Decimal(1_000_000)
"""The largest rate: a million tokens charged per token used."""
RATE_ERROR = "invalid_rate"
"""The code of every refused rate, on every interface."""
MAX_MODELS_ALLOWED = 1_000
"""The most model names an organization's access list holds."""

_RATE_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
RATE_TEXT_LENGTH = 40
"""The longest rate text a body may hold (spaces around it included)."""
_EXAMPLES = '"0.5", "1.25" or 2'


def parse_rate(value: object) -> Decimal:
    """An exact rate from text ("0.5"), an integer, a Decimal, or a float that is exactly
    a short decimal (0.5, not 0.1). Raises ValueError with a message a person can act on."""
    rate: Decimal
    if isinstance(value, bool):
        raise ValueError(f"a rate is a number such as {_EXAMPLES}, not true or false")
    if isinstance(value, int):
        rate = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a rate is a number such as {_EXAMPLES}")
        rate = Decimal(repr(value))
        if rate != Decimal(value):
            # 0.1 as a JSON number is the binary float nearest to it, not 0.1 itself.
            raise ValueError(
                f'{value!r} can\'t be held exactly as a JSON number; send it as text: "{value!r}"'
            )
    elif isinstance(value, Decimal):
        rate = value
    elif isinstance(value, str):
        text = value.strip()
        if len(value) > RATE_TEXT_LENGTH:
            raise ValueError(f"a rate is at most {RATE_TEXT_LENGTH} characters")
        if text.startswith("-"):
            raise ValueError(f"'{text}' is negative; a rate is 0 or more")
        if not _RATE_TEXT.fullmatch(text):
            raise ValueError(f"'{text[:40]}' is not a rate; write it like {_EXAMPLES}")
        try:
            rate = Decimal(text)
        except InvalidOperation as error:  # the pattern admits none, but say so plainly
            raise ValueError(f"'{text}' is not a rate; write it like {_EXAMPLES}") from error
    else:
        raise ValueError(f"a rate is a number such as {_EXAMPLES}")
    if not rate.is_finite():
        raise ValueError(f"a rate is a number such as {_EXAMPLES}")
    if rate < 0:
        raise ValueError(f"{rate} is negative; a rate is 0 or more")
    if rate > MAX_RATE:
        raise ValueError(f"{rate} is over the largest rate, {MAX_RATE:,}")
    exponent = rate.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -RATE_PLACES:
        raise ValueError(f"{rate} has more than {RATE_PLACES} decimal places")
    return plain(rate)


def plain(rate: Decimal) -> Decimal:
    """A rate without trailing zeros, written out (2, not 2.00 nor 2E+0)."""
    if rate == rate.to_integral_value():
        return rate.quantize(Decimal(1))
    return rate.normalize()


def rate_or_refuse(value: object, field: str) -> Decimal:
    """`parse_rate` for the CLI and the dashboard: a refusal is InvalidRate naming `field`."""
    try:
        return parse_rate(value)
    except ValueError as error:
        raise InvalidRate(f"{field}: {error}.", details={"field": field}) from error
