"""What the sync and async clients share: requests, retries, answers and errors.

Each API operation is described once, as a `Call` (see `_operations.py`); both clients send
a Call the same way and differ only in whether they wait with `time.sleep` or
`asyncio.sleep`. Everything that decides something lives here, free of I/O.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import httpx
from pydantic import ValidationError

from tokenadmin import __version__
from tokenadmin.client._errors import TokenAdminAPIError, TokenAdminConnectionError, error_class

T = TypeVar("T")

USER_AGENT = f"tokenadmin-python/{__version__}"
DEFAULT_TIMEOUT = 30.0
RETRY_CODES = frozenset({"idempotency_key_in_flight", "retry"})
"""409 answers that ask for the same request again, with the same idempotency key."""
MAX_RETRY_AFTER = 60.0
"""A longer Retry-After is not waited for in a call; the computed backoff is used instead."""
RETRIED_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to the API and how to read its answer.

    A write carries its idempotency key from the moment it is described, so every retry of
    the call sends the same key and the service applies the change at most once.
    """

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, str] | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError("max_retries, backoff and backoff_max must not be negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        # Jitter spreads out clients that failed together, so they don't retry together.
        if retry_after is not None and retry_after <= MAX_RETRY_AFTER:
            return retry_after * random.uniform(1.0, 1.5)  # at least what the service asks
        ceiling = min(self.backoff_max, self.backoff * 2.0**attempt)
        return ceiling * random.uniform(0.5, 1.0)


def error_code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


def is_retryable(response: httpx.Response) -> bool:
    status = response.status_code
    if status >= 500 or status == 429:
        return True
    return status == 409 and error_code(response) in RETRY_CODES


def retry_after(response: httpx.Response, now: datetime | None = None) -> float | None:
    """The Retry-After header in seconds (it may be seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def api_error(call: Call[Any], response: httpx.Response) -> TokenAdminAPIError:
    status = response.status_code
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
        if not isinstance(details, dict):
            details = {"details": details}
    except (ValueError, KeyError, TypeError):
        code = "http_error"
        text = response.text.strip()[:200]
        message = f"HTTP {status} from {call.method} {call.path}" + (f": {text}" if text else "")
        details = {}
    return error_class(status, code)(
        status,
        code,
        message,
        details,
        idempotency_key=call.idempotency_key,
        response=response,
    )


class Core:
    """The settings of a client and every decision about one exchange."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        policy: RetryPolicy,
        timeout: float | httpx.Timeout | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy
        self.timeout = timeout
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def build(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
        headers = dict(self.headers)
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        return http.build_request(
            call.method,
            self.base_url + call.path,
            params=call.params,
            json=call.json,
            headers=headers,
            timeout=httpx.USE_CLIENT_DEFAULT if self.timeout is None else self.timeout,
        )

    def retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before sending the call again, or None to answer now."""
        if attempt >= self.policy.max_retries or not is_retryable(response):
            return None
        return self.policy.delay(attempt, retry_after(response))

    def retry_delay_after(
        self, call: Call[Any], error: httpx.TransportError, attempt: int
    ) -> float:
        """Seconds to wait after a failed exchange; raises when it is not retried."""
        if attempt >= self.policy.max_retries or not isinstance(error, RETRIED_ERRORS):
            raise TokenAdminConnectionError(
                f"{call.method} {self.base_url}{call.path} failed after {attempt + 1}"
                f" attempt{'s' if attempt else ''}: {type(error).__name__}: {error}",
                idempotency_key=call.idempotency_key,
            ) from error
        return self.policy.delay(attempt)

    def answer(self, call: Call[T], response: httpx.Response) -> T:
        """The call's typed result, or the error the answer describes."""
        if response.status_code >= 400:
            raise api_error(call, response)
        try:
            return call.parse(response.json())
        except (ValueError, ValidationError) as error:
            raise TokenAdminAPIError(
                response.status_code,
                "unexpected_response",
                f"{call.method} {call.path} answered something this client can't read: {error}",
                idempotency_key=call.idempotency_key,
                response=response,
            ) from error
