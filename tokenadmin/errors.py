"""One error base class; every refusal is a named error with a stable machine code.

The API maps TokenAdminError to `{"error": {"code", "message", "details"}}` with the
error's HTTP status in one handler (see app.py); the CLI prints the same code and message.
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


class InvalidRequest(TokenAdminError):
    code = "invalid_request"
    status_code = 422


class MalformedRequest(TokenAdminError):
    code = "malformed_json"
    status_code = 400


class Unauthenticated(TokenAdminError):
    code = "unauthenticated"
    status_code = 401


class Forbidden(TokenAdminError):
    code = "forbidden"
    status_code = 403


class NotFound(TokenAdminError):
    code = "not_found"
    status_code = 404


class Conflict(TokenAdminError):
    code = "conflict"
    status_code = 409


class EmailTaken(Conflict):
    code = "email_taken"


class VersionConflict(Conflict):
    code = "version_conflict"


class IdempotencyKeyReused(TokenAdminError):
    code = "idempotency_key_reused"
    status_code = 422


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"


class InsufficientTokens(TokenAdminError):
    code = "insufficient_tokens"
    status_code = 402


class RuleRefused(TokenAdminError):
    """A change the rules of SPEC section 3 do not allow (the code names the rule)."""

    status_code = 422


class AllowanceChangeRefused(RuleRefused):
    code = "allowance_change_refused"


class ReservationClosed(Conflict):
    code = "reservation_closed"


class RequestAlreadyDecided(Conflict):
    """A token request is decided once: approved, denied or withdrawn."""

    code = "request_already_decided"


class RequestAlreadyPending(Conflict):
    """At most one pending token request per user and kind."""

    code = "request_already_pending"


class Unavailable(TokenAdminError):
    """The server is stopping, or can't reach its database (database.UNREACHABLE). Send the
    request again: a stopping server did not apply it, but a write cut off from the database
    may have committed before the connection broke, so send a write again with the same
    Idempotency-Key, which applies it at most once."""

    code = "unavailable"
    status_code = 503
    headers = MappingProxyType({"Retry-After": "1"})
