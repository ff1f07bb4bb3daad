"""What the sync and async clients share: requests, retries, answers and errors.

Each API operation is written once, as a method of `AsyncClient` (`_async.py`) that
describes its request as a `Call` with the helpers below and sends it; `Client`
(`_sync.py`) is generated from that file. Everything that decides something lives here,
free of I/O.
"""

from __future__ import annotations

import email.utils
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from tokenadmin import __version__
from tokenadmin.allowance.schemas import AllowanceRow
from tokenadmin.client._errors import TokenAdminAPIError, TokenAdminConnectionError, error_class
from tokenadmin.distribution.schemas import KindRule
from tokenadmin.tokens import Kind, Period
from tokenadmin.usage.schemas import UsageFields

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


AsyncSleep = Callable[[float], Awaitable[None]]
SyncSleep = Callable[[float], None]
"""How a client waits between attempts (unasync turns `AsyncSleep` into `SyncSleep`)."""

Id = uuid.UUID | str
"""An object's id, as a UUID or its text."""
UserRef = uuid.UUID | str
"""A user: their id, or their email address (metering accepts both)."""
KindName = Kind | Literal["inference", "training"]
PeriodName = Period | Literal["monthly", "none"]
UserStatus = Literal["active", "deactivated"]
Order = Literal["asc", "desc"]
Granularity = Literal["day", "month"]
AllowanceRowIn = AllowanceRow | Mapping[str, Any]
"""A row of an allowance change: an `AllowanceRow`, or a mapping with the same fields."""
UsageEventIn = UsageFields | Mapping[str, Any]
"""A usage event of a batch: `UsageEvent` (with its key), `UsageFields`, or a mapping."""
RateIn = Decimal | str | int
"""A rate: an exact Decimal, its text ("0.5") or an integer (sent as text)."""
KindRuleIn = KindRule | Mapping[str, Any]
"""How one kind is distributed: a `KindRule`, or a mapping with the same fields."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to the API and the type of its answer.

    A write carries its idempotency key from the moment it is described, so every retry of
    the call sends the same key and the service applies the change at most once.
    """

    method: str
    path: str
    answer: type[T]
    json: Any = None
    params: Mapping[str, str] | None = None
    idempotency_key: str | None = None


def read(path: str, answer: type[T], params: Mapping[str, str] | None = None) -> Call[T]:
    """A GET of `path`, answered with an `answer`."""
    return Call("GET", path, answer, params=params)


def write(method: str, path: str, answer: type[T], key: str | None, body: Any = None) -> Call[T]:
    """A write with the caller's idempotency key, or a fresh one that every retry reuses."""
    return Call(
        method, path, answer, json=body, idempotency_key=str(uuid.uuid4()) if key is None else key
    )


def url(template: str, *ids: Id) -> str:
    """`template` with each `{}` replaced by an id, quoted as one path segment."""
    return template.format(*(quote(str(i), safe="") for i in ids))


_NOT_FIELDS = frozenset({"self", "idempotency_key"})


def _value(value: Any) -> Any:
    """A mapping as a dict; a request model with the fields it was given (not its None)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    return dict(value) if isinstance(value, Mapping) else value


def _given(arguments: Mapping[str, Any], leave_out: tuple[str, ...]) -> Any:
    # An argument named like a Python keyword with a trailing underscore (`from_`) is the
    # field without it (`from`).
    given = {
        name.removesuffix("_"): _value(value)
        for name, value in arguments.items()
        if value is not None and name not in _NOT_FIELDS and name not in leave_out
    }
    return to_jsonable_python(given)


def fields(arguments: Mapping[str, Any], *leave_out: str) -> dict[str, Any]:
    """A method's arguments (its `locals()`, taken first thing) as a JSON body.

    The names of a method's arguments are the names of the fields it sends (`from_` sends
    `from`). Arguments left None are not sent, so the service's default (or, on updates,
    the current value) applies; a mapping or a request model (its fields given) is sent as
    an object; `self`, the idempotency key and the ids in `leave_out` (they go in the path)
    are never sent.
    """
    body: dict[str, Any] = _given(arguments, leave_out)
    return body


def query(arguments: Mapping[str, Any], *leave_out: str) -> dict[str, str]:
    """A method's arguments (its `locals()`, taken first thing) as query parameters."""
    given: dict[str, Any] = _given(arguments, leave_out)
    return {k: v if isinstance(v, str) else str(v) for k, v in given.items()}


def row(row: AllowanceRowIn | UsageEventIn) -> dict[str, Any]:
    """One row of a list in a body (an allowance change, a batch's event) as an object."""
    fields: dict[str, Any] = to_jsonable_python(_value(row))
    return fields


def event(event: UsageEventIn) -> dict[str, Any]:
    fields = row(event)
    # Keys are made now, so a retried batch sends every event with the same key.
    if fields.get("idempotency_key") is None:
        fields["idempotency_key"] = str(uuid.uuid4())
    return fields


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}


def parse(answer: type[T], data: Any) -> T:
    """`data` read as an `answer`: a response model, a list or dict of them, or `str`."""
    adapter = _ADAPTERS.get(answer)
    if adapter is None:
        adapter = _ADAPTERS[answer] = TypeAdapter(answer)
    result: T = adapter.validate_python(data)
    return result


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
            # A CSV download answers `str`: the text itself.
            data = response.text if call.answer is str else response.json()
            return parse(call.answer, data)
        except (ValueError, ValidationError) as error:
            raise TokenAdminAPIError(
                response.status_code,
                "unexpected_response",
                f"{call.method} {call.path} answered something this client can't read: {error}",
                idempotency_key=call.idempotency_key,
                response=response,
            ) from error
