"""The signature of a webhook: HMAC-SHA256 with the endpoint's secret over the timestamp
and the raw body, `Tokenadmin-Signature: t=<unix seconds>,v1=<hex>` (docs/webhooks.md).

Signing the timestamp with the body makes a captured request useless after the receiver's
tolerance (5 minutes): changing `t` breaks the signature."""

from __future__ import annotations

import hashlib
import hmac

TOLERANCE_SECONDS = 300
"""How old a signed timestamp receivers accept (docs/webhooks.md)."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{body}"` with the secret."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, body: bytes, sent: str, now: int) -> bool:
    """What a receiver does: the header's timestamp is recent and its v1 matches."""
    parts = dict(part.split("=", 1) for part in sent.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), parts.get("v1", ""))
