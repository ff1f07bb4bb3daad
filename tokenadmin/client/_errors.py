"""What the client raises: every refusal of the API as one exception with its machine code."""

from __future__ import annotations

from typing import Any

import httpx


class TokenAdminClientError(Exception):
    """Base of everything the client raises.

    `idempotency_key` is the key the failed write was sent with (None for reads): a caller
    who retries later with the same key can never apply the change twice.
    """

    def __init__(self, message: str, *, idempotency_key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.idempotency_key = idempotency_key


class TokenAdminConnectionError(TokenAdminClientError):
    """No answer from the service (connection refused, reset or timed out), after retries."""


class TokenAdminAPIError(TokenAdminClientError):
    """The service answered with an error: `{"error": {"code", "message", "details"}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message, idempotency_key=idempotency_key)
        self.status = status
        self.code = code
        self.details = details or {}
        self.response = response

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r})"


class InvalidRequest(TokenAdminAPIError):
    """400, 413 or 422: a value, or a change the rules do not allow (see `code`, `details`)."""


class IdempotencyKeyReused(InvalidRequest):
    """The idempotency key was already used for a different request."""


class Unauthenticated(TokenAdminAPIError):
    """401: the API key is missing, wrong or revoked."""


class InsufficientTokens(TokenAdminAPIError):
    """402: usage or a reservation that does not fit what remains; `details` says what does."""


class Forbidden(TokenAdminAPIError):
    """403: the key lacks the scope this needs."""


class NotFound(TokenAdminAPIError):
    """404: no such object, or it belongs to another organization."""


class Conflict(TokenAdminAPIError):
    """409: the request conflicts with the current state (see `code`)."""


class VersionConflict(Conflict):
    """409: someone changed the user since the version you sent; `details` has current values."""


class RateLimited(TokenAdminAPIError):
    """429: too many requests, still refused after the client's retries."""


class ServerError(TokenAdminAPIError):
    """5xx: the service failed, still failing after the client's retries."""


_BY_CODE: dict[str, type[TokenAdminAPIError]] = {
    "insufficient_tokens": InsufficientTokens,
    "version_conflict": VersionConflict,
    "idempotency_key_reused": IdempotencyKeyReused,
}
_BY_STATUS: dict[int, type[TokenAdminAPIError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    402: InsufficientTokens,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


def error_class(status: int, code: str) -> type[TokenAdminAPIError]:
    """The most specific exception class for an error answer."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, TokenAdminAPIError)
