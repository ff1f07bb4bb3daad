"""JSON text with sorted keys and no blanks, as the hashes and fingerprints spell it.

`encoder` makes the standard library's C encoder once, with `json.dumps`'s arguments:
`json.dumps` and `JSONEncoder.encode` make one at each call, which costs more than encoding
a small value (the journal's chain and the idempotency fingerprints encode one per entry
and per event). It has no check for circular values: what it encodes has none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

Encode = Callable[[Any, int], Sequence[str]]
"""`encode(value, 0)`: the value's text, in pieces to join."""

_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def encoder(
    *, ensure_ascii: bool, default: Callable[[Any], Any] | None = None, in_c: bool = True
) -> Encode:
    """The text `json.dumps(value, sort_keys=True, separators=(",", ":"),
    ensure_ascii=ensure_ascii, default=default)` writes; in Python without the C encoder
    (or with `in_c` false), the same text, slower."""
    python = json.JSONEncoder(
        sort_keys=True, separators=(",", ":"), ensure_ascii=ensure_ascii, default=default
    )
    if _c_make_encoder is None or not in_c:

        def slowly(value: Any, _level: int) -> list[str]:
            return [python.encode(value)]

        return slowly
    spell = json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    encode: Encode = _c_make_encoder(None, python.default, spell, None, ":", ",", True, False, True)
    return encode
