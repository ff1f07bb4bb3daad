"""One error base class; every refusal is a named error with a stable machine code.

The API maps TokenAdminError to `{"error": {"code", "message", "details"}}` with the
error's HTTP status in one handler (see app.py); the CLI prints the same code and message.
A subclass names its code and status in its class line, as
`class NotFound(TokenAdminError, code="not_found", status_code=404)` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any


class TokenAdminError(Exception):
    code: str = "error"
    status_code: int = 400
    headers: Mapping[str, str] = MappingProxyType({})
    """HTTP headers the API's answer carries besides the error (the CLI has no use for them)."""

    def __init_subclass__(cls, *, code: str | None = None, status_code: int | None = None) -> None:
        super().__init_subclass__()
        if code is not None:
            cls.code = code
        if status_code is not None:
            cls.status_code = status_code

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        code: str | None = None,
        status_code: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if headers is not None:
            self.headers = headers

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidRequest(TokenAdminError, code="invalid_request", status_code=422):
    """A field is missing, of the wrong type, out of range or unknown."""


class MalformedRequest(TokenAdminError, code="malformed_json", status_code=400):
    """A body that can't be read as a JSON object."""


class Unauthenticated(TokenAdminError, code="unauthenticated", status_code=401):
    """No key or session, or one that is wrong, revoked or ended."""


class Forbidden(TokenAdminError, code="forbidden", status_code=403):
    """The caller is known but may not do this."""


class NotFound(TokenAdminError, code="not_found", status_code=404):
    """No such object for this caller (another organization's objects included)."""


class Conflict(TokenAdminError, code="conflict", status_code=409):
    """The request disagrees with the state an object is in now."""


class EmailTaken(Conflict, code="email_taken"):
    """A user with this email exists."""


class VersionConflict(Conflict, code="version_conflict"):
    """The object changed since the version the caller sent."""


class IdempotencyKeyReused(TokenAdminError, code="idempotency_key_reused", status_code=422):
    """The key was used for a different request."""


class IdempotencyKeyInFlight(Conflict, code="idempotency_key_in_flight"):
    """The first request with this key has not finished yet."""


class InsufficientTokens(TokenAdminError, code="insufficient_tokens", status_code=402):
    """Usage, a reservation or a commit that does not fit what is left."""


class RuleRefused(TokenAdminError, status_code=422):
    """A change the rules of SPEC section 3 do not allow (the code names the rule)."""


class AllowanceChangeRefused(RuleRefused, code="allowance_change_refused"):
    """A batch of allowance changes with refused rows."""


class ReservationClosed(Conflict, code="reservation_closed"):
    """A commit or release of a reservation that was already committed, released or expired
    (a commit of an expired one is ReservationExpired)."""


class ReservationExpired(ReservationClosed, code="reservation_expired"):
    """A commit after the reservation's time ran out: its tokens were released."""


class RequestAlreadyDecided(Conflict, code="request_already_decided"):
    """A token request is decided once: approved, denied or withdrawn."""


class RequestAlreadyPending(Conflict, code="request_already_pending"):
    """At most one pending token request per user and kind."""


class ReportRangeRefused(InvalidRequest, code="report_range_too_long"):
    """A usage report over more days or months than one report spans; the same class says
    `report_range_reversed` for a range that ends before it begins and `report_too_large`
    for a report of too many rows."""


class Unavailable(TokenAdminError, code="unavailable", status_code=503):
    """The server is stopping, or can't reach its database (database.UNREACHABLE). Send the
    request again: a stopping server did not apply it, but a write cut off from the database
    may have committed before the connection broke, so send a write again with the same
    Idempotency-Key, which applies it at most once."""

    headers = MappingProxyType({"Retry-After": "1"})


class ModelNotFound(NotFound, code="model_not_found"):
    """A model the catalog does not have, for this organization or the platform."""


class ModelNotAllowed(Forbidden, code="model_not_allowed"):
    """A model the caller's organization may not use (its model access)."""


class UpstreamNotConfigured(TokenAdminError, code="upstream_not_configured", status_code=503):
    """A model with no upstream to send its requests to: none on the model, the
    organization or the platform's settings."""


class InvalidRate(InvalidRequest, code="invalid_rate"):
    """A rate that is not an exact decimal from 0 to 1,000,000 with at most 6 decimal places."""
