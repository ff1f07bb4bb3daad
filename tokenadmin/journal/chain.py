"""The journal's hash chains: an entry cannot be changed, removed or inserted quietly.

Each entry belongs to one chain: its user's, or, for an entry without a user, its
organization's. It stores the hash of the entry before it in that chain (`prev_hash`) and
its own `hash`, the SHA-256 of that previous hash and of everything the entry says. The
newest hash of each chain is also kept on the user or organization row
(`journal_head`), so removing the last entries of a chain shows too.

Why a chain per user rather than one per organization: every entry of a user is written
while that user's row is locked (metering) or while the whole organization is
(administration), so a user's chain grows one entry at a time without any further lock;
one chain per organization would make every metered request of an organization wait for
the one before it, on one row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from hashlib import sha256
from typing import Any

from tokenadmin.journal.schemas import CHANGES

# What an entry says, in a fixed order; its id is not part of it (the chain orders it).
CONTENT = (
    "org_id",
    "user_id",
    "purchase_id",
    "reservation_id",
    "created_at",
    "actor",
    "action",
    "kind",
    "amount",
    "reason",
    *CHANGES,
    "details",
)

Chain = tuple[str, uuid.UUID]  # ("user", user id) or ("organization", organization id)


def chain_of(entry: Mapping[Any, Any]) -> Chain:
    user_id = entry["user_id"]
    return ("user", user_id) if user_id is not None else ("organization", entry["org_id"])


def link(previous: str | None, entry: Mapping[Any, Any]) -> str:
    """The hash of `entry` after `previous` (None for the first entry of a chain)."""
    return link_encoded(previous, entry, details_json(entry["details"]))


def link_encoded(previous: str | None, entry: Mapping[Any, Any], details: str) -> str:
    """`link`, with the entry's details given already as `details_json` writes them (the
    same for the same details: `verify` encodes each distinct details once)."""
    # Spelled out rather than looped over CONTENT: verify runs this for every entry.
    created_at: datetime = entry["created_at"]
    if created_at.tzinfo is not UTC:
        created_at = created_at.astimezone(UTC)
    # isoformat(timespec="microseconds"), spelled out: the keyword costs three times the
    # call (the fraction is only left out when it is 0).
    created = created_at.isoformat()
    if not created_at.microsecond:
        created = f"{created[:19]}.000000{created[19:]}"
    user_id, purchase_id, reservation_id = (
        entry["user_id"],
        entry["purchase_id"],
        entry["reservation_id"],
    )
    content = [
        previous or "",
        str(entry["org_id"]),
        None if user_id is None else str(user_id),
        None if purchase_id is None else str(purchase_id),
        None if reservation_id is None else str(reservation_id),
        created,
        entry["actor"],
        entry["action"],
        entry["kind"],
        entry["amount"],
        entry["reason"],
        entry["capacity_delta"],
        entry["allocated_delta"],
        entry["allowance_delta"],
        entry["used_delta"],
        entry["reserved_delta"],
        entry["capacity_after"],
        entry["allocated_after"],
        entry["allowance_after"],
        entry["used_after"],
        entry["reserved_after"],
    ]
    # The JSON array of every field and the details, as one encoding of the whole list
    # would spell it: the list without its last item, then "," and the details, then "]".
    text = "".join(_encode(content, 0))
    return sha256(f"{text[:-1]},{details}]".encode()).hexdigest()


def details_json(details: Any) -> str:
    """An entry's details as its hash spells them: JSON with sorted keys, no blanks."""
    return "".join(_encode(details, 0))


# The standard library's C encoder, made once rather than at every call (as
# `json.JSONEncoder.encode` does): sorted keys, "," and ":" without blanks, text as is
# (not as \u escapes). It has no check for circular values; an entry has none.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)


def _encode_slowly(value: Any, _level: int) -> list[str]:
    return [_ENCODER.encode(value)]  # Python without the C encoder: the same text, slower


_encode: Callable[[Any, int], Sequence[str]] = (
    _encode_slowly
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", True, False, True
    )
)
