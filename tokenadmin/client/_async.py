"""The client's one definition of every API operation: `AsyncClient`.

Each method says, once, what its operation sends and answers: its signature, its
docstring and the `Call` it makes (method, path, body or query, idempotency key, answer
type). `Client` in `_sync.py` is generated from this file by unasync (`make
tokenadmin/client/_sync.py`, or any build of the package): edit this file, never that one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic_core import to_jsonable_python

from tokenadmin.allowance.schemas import AllowancePreview
from tokenadmin.client._core import (
    DEFAULT_TIMEOUT,
    AllowanceRowIn,
    AsyncSleep,
    Call,
    Core,
    Granularity,
    Id,
    KindName,
    Order,
    PeriodName,
    RetryPolicy,
    UsageEventIn,
    UserRef,
    UserStatus,
    event,
    fields,
    query,
    read,
    row,
    url,
    write,
)
from tokenadmin.journal.schemas import JournalPage
from tokenadmin.organization.schemas import (
    ApiKeyCreated,
    ApiKeyOut,
    BalanceOut,
    OrganizationOut,
    PurchaseOut,
)
from tokenadmin.usage.schemas import BatchOut, ReservationOut, UsageAccepted
from tokenadmin.user.schemas import (
    Role,
    SortField,
    UsageHistoryOut,
    UserBalanceOut,
    UserOut,
    UserPage,
)

T = TypeVar("T")

ORGANIZATION = "/v1/organizations/{}"
USER = "/v1/users/{}"
RESERVATION = "/v1/reservations/{}"


class AsyncClient:
    """The tokenadmin REST API: `AsyncClient`'s methods are awaited, `Client`'s are not.

    Reads and writes are retried on connection failures, timeouts, 5xx, 429 and the 409s
    that ask for a retry, with exponential backoff and jitter, honouring Retry-After.
    Every write is sent with an idempotency key (yours, or a fresh one per call) that all
    of its retries reuse, so a write is applied at most once however often it is sent.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._owns_http = http_client is None
        self._http = (
            http_client
            if http_client is not None
            else httpx.AsyncClient(timeout=DEFAULT_TIMEOUT if timeout is None else timeout)
        )
        policy = RetryPolicy(max_retries, backoff, backoff_max)
        self._core = Core(base_url, api_key, policy, None if self._owns_http else timeout)
        self._sleep: AsyncSleep = asyncio.sleep

    async def aclose(self) -> None:
        """Close the connections (an http_client you passed in stays open)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._core.build(self._http, call))
            except httpx.TransportError as error:
                delay = self._core.retry_delay_after(call, error, attempt)
            else:
                wait = self._core.retry_delay(response, attempt)
                if wait is None:
                    return self._core.answer(call, response)
                await response.aclose()
                delay = wait
            await self._sleep(delay)
            attempt += 1

    # --- organizations ---------------------------------------------------------------------
    # Each write takes its body from its own arguments: `fields(locals(), <ids in the path>)`
    # comes first, before the method binds any other name.

    async def create_organization(
        self,
        name: str,
        *,
        time_zone: str | None = None,
        period: PeriodName | None = None,
        min_inference: int | None = None,
        min_training: int | None = None,
        overallocation: bool | None = None,
        idempotency_key: str | None = None,
    ) -> OrganizationOut:
        """Create an organization (platform operators)."""
        body = fields(locals())
        path = "/v1/organizations"
        return await self._send(write("POST", path, OrganizationOut, idempotency_key, body))

    async def list_organizations(self) -> list[OrganizationOut]:
        """All organizations for operators; one's own otherwise."""
        return await self._send(read("/v1/organizations", list[OrganizationOut]))

    async def get_organization(self, org_id: Id) -> OrganizationOut:
        """An organization and its policy."""
        return await self._send(read(url(ORGANIZATION, org_id), OrganizationOut))

    async def update_organization(
        self,
        org_id: Id,
        *,
        name: str | None = None,
        time_zone: str | None = None,
        period: PeriodName | None = None,
        min_inference: int | None = None,
        min_training: int | None = None,
        overallocation: bool | None = None,
        idempotency_key: str | None = None,
    ) -> OrganizationOut:
        """Change an organization's name or policy; what you leave None stays."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION, org_id)
        return await self._send(write("PATCH", path, OrganizationOut, idempotency_key, body))

    async def record_purchase(
        self,
        org_id: Id,
        *,
        inference_amount: int = 0,
        training_amount: int = 0,
        purchased_on: date | None = None,
        expires_at: datetime | date | None = None,
        payer: str | None = None,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> PurchaseOut:
        """Record a purchase of tokens (platform operators)."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/purchases", org_id)
        return await self._send(write("POST", path, PurchaseOut, idempotency_key, body))

    async def list_purchases(self, org_id: Id) -> list[PurchaseOut]:
        """An organization's purchases, expired ones included."""
        return await self._send(read(url(ORGANIZATION + "/purchases", org_id), list[PurchaseOut]))

    async def change_purchase_expiry(
        self,
        org_id: Id,
        purchase_id: Id,
        expires_at: datetime | date | None,
        *,
        idempotency_key: str | None = None,
    ) -> PurchaseOut:
        """Set, move or (with None) clear a purchase's expiry (platform operators)."""
        body = {"expires_at": to_jsonable_python(expires_at)}  # sent even when None: null clears it
        path = url(ORGANIZATION + "/purchases/{}", org_id, purchase_id)
        return await self._send(write("PATCH", path, PurchaseOut, idempotency_key, body))

    async def get_balance(self, org_id: Id) -> BalanceOut:
        """The token balance of both kinds: capacity, allocated, balance, used, reserved."""
        return await self._send(read(url(ORGANIZATION + "/balance", org_id), BalanceOut))

    async def create_api_key(
        self, org_id: Id, name: str, scopes: Sequence[str], *, idempotency_key: str | None = None
    ) -> ApiKeyCreated:
        """Create an API key; `.key` is in this answer only."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/api-keys", org_id)
        return await self._send(write("POST", path, ApiKeyCreated, idempotency_key, body))

    async def list_api_keys(self, org_id: Id) -> list[ApiKeyOut]:
        """The organization's API keys (never the keys themselves)."""
        return await self._send(read(url(ORGANIZATION + "/api-keys", org_id), list[ApiKeyOut]))

    async def revoke_api_key(
        self, org_id: Id, key_id: Id, *, idempotency_key: str | None = None
    ) -> ApiKeyOut:
        """Revoke an API key; it stops working at once."""
        path = url(ORGANIZATION + "/api-keys/{}", org_id, key_id)
        return await self._send(write("DELETE", path, ApiKeyOut, idempotency_key))

    # --- users and allowances --------------------------------------------------------------

    async def list_users(
        self,
        org_id: Id,
        *,
        search: str | None = None,
        status: UserStatus | None = None,
        role: Role | None = None,
        near_limit: float | None = None,
        sort: SortField | None = None,
        order: Order | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> UserPage:
        """Search, filter, sort and page through an organization's users."""
        params = query(locals(), "org_id")
        return await self._send(read(url(ORGANIZATION + "/users", org_id), UserPage, params))

    async def create_user(
        self,
        org_id: Id,
        email: str,
        name: str,
        *,
        role: Role | None = None,
        max_tokens: int | None = None,
        max_train_tokens: int | None = None,
        password: str | None = None,
        idempotency_key: str | None = None,
    ) -> UserOut:
        """Add a user; allowances default to the organization's minimums."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/users", org_id)
        return await self._send(write("POST", path, UserOut, idempotency_key, body))

    async def get_user(self, user_id: Id) -> UserOut:
        """A user with their allowances and this period's usage."""
        return await self._send(read(url(USER, user_id), UserOut))

    async def update_user(
        self,
        user_id: Id,
        *,
        name: str | None = None,
        role: Role | None = None,
        max_tokens: int | None = None,
        max_train_tokens: int | None = None,
        expected_version: int | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> UserOut:
        """Change a user in one atomic step; with expected_version, refused if it changed."""
        body = fields(locals(), "user_id")
        return await self._send(write("PATCH", url(USER, user_id), UserOut, idempotency_key, body))

    async def deactivate_user(self, user_id: Id, *, idempotency_key: str | None = None) -> UserOut:
        """Deactivate a user: usage stops, reservations are released."""
        path = url(USER + "/deactivate", user_id)
        return await self._send(write("POST", path, UserOut, idempotency_key))

    async def reactivate_user(
        self,
        user_id: Id,
        *,
        max_tokens: int | None = None,
        max_train_tokens: int | None = None,
        idempotency_key: str | None = None,
    ) -> UserOut:
        """Reactivate a user with at least the organization's minimums."""
        body = fields(locals(), "user_id")
        path = url(USER + "/reactivate", user_id)
        return await self._send(write("POST", path, UserOut, idempotency_key, body))

    async def get_user_balance(self, user_id: Id) -> UserBalanceOut:
        """What a user may still use of each kind."""
        return await self._send(read(url(USER + "/balance", user_id), UserBalanceOut))

    async def get_usage_history(
        self, user_id: Id, *, granularity: Granularity = "day"
    ) -> UsageHistoryOut:
        """A user's usage per day of this period, or per month of the past year."""
        params = query(locals(), "user_id")
        return await self._send(read(url(USER + "/usage", user_id), UsageHistoryOut, params))

    async def change_allowances(
        self,
        org_id: Id,
        rows: Sequence[AllowanceRowIn],
        *,
        dry_run: bool = False,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> AllowancePreview:
        """Change Max Tokens and Max Train Tokens of many users: all rows or none."""
        body = fields(locals(), "org_id", "rows") | {"changes": [row(r) for r in rows]}
        path = url(ORGANIZATION + "/allowances", org_id)
        return await self._send(write("POST", path, AllowancePreview, idempotency_key, body))

    # --- journal ---------------------------------------------------------------------------

    async def list_journal(
        self,
        org_id: Id,
        *,
        user: Id | None = None,
        kind: KindName | None = None,
        action: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> JournalPage:
        """Journal entries, newest first; the next page starts before `next_before_id`."""
        params = query(locals(), "org_id")
        return await self._send(read(url(ORGANIZATION + "/journal", org_id), JournalPage, params))

    # --- metering --------------------------------------------------------------------------

    async def record_usage(
        self,
        user: UserRef,
        kind: KindName,
        tokens: int,
        *,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageAccepted:
        """Record usage; raises InsufficientTokens when it does not fit what remains."""
        body = fields(locals())
        return await self._send(write("POST", "/v1/usage", UsageAccepted, idempotency_key, body))

    async def record_usage_batch(self, events: Sequence[UsageEventIn]) -> BatchOut:
        """Record up to 1,000 usage events; each is accepted or refused on its own."""
        # The batch itself takes no key: each event carries its own, made now (see `event`).
        body = {"events": [event(e) for e in events]}
        return await self._send(Call("POST", "/v1/usage/batch", BatchOut, json=body))

    async def reserve(
        self,
        user: UserRef,
        kind: KindName,
        tokens: int,
        *,
        ttl_seconds: int | None = None,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ReservationOut:
        """Hold tokens until commit, release or expiry."""
        body = fields(locals())
        path = "/v1/reservations"
        return await self._send(write("POST", path, ReservationOut, idempotency_key, body))

    async def commit_reservation(
        self, reservation_id: Id, *, tokens: int | None = None, idempotency_key: str | None = None
    ) -> ReservationOut:
        """Commit what was used (default: all of it); the rest is released."""
        body = fields(locals(), "reservation_id")
        path = url(RESERVATION + "/commit", reservation_id)
        return await self._send(write("POST", path, ReservationOut, idempotency_key, body))

    async def release_reservation(
        self, reservation_id: Id, *, idempotency_key: str | None = None
    ) -> ReservationOut:
        """Release a reservation without using it."""
        path = url(RESERVATION + "/release", reservation_id)
        return await self._send(write("POST", path, ReservationOut, idempotency_key))

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, str]:
        """Whether the service and its database answer (needs no API key)."""
        return await self._send(read("/healthz", dict[str, str]))
