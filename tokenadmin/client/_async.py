"""`AsyncClient`: the tokenadmin REST API over an httpx.AsyncClient."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import date, datetime
from types import TracebackType
from typing import Any, TypeVar

import httpx

from tokenadmin.allowance.schemas import AllowancePreview
from tokenadmin.client import _operations as op
from tokenadmin.client._core import DEFAULT_TIMEOUT, Call, Core, RetryPolicy
from tokenadmin.client._operations import (
    AllowanceRowIn,
    Granularity,
    Id,
    KindName,
    Order,
    PeriodName,
    UsageEventIn,
    UserRef,
    UserStatus,
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


class AsyncClient:
    """The tokenadmin REST API, asynchronously: the same methods as `Client`, awaited.

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
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

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
        return await self._send(
            op.create_organization(
                name,
                time_zone=time_zone,
                period=period,
                min_inference=min_inference,
                min_training=min_training,
                overallocation=overallocation,
                idempotency_key=idempotency_key,
            )
        )

    async def list_organizations(self) -> list[OrganizationOut]:
        """All organizations for operators; one's own otherwise."""
        return await self._send(op.list_organizations())

    async def get_organization(self, org_id: Id) -> OrganizationOut:
        """An organization and its policy."""
        return await self._send(op.get_organization(org_id))

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
        return await self._send(
            op.update_organization(
                org_id,
                name=name,
                time_zone=time_zone,
                period=period,
                min_inference=min_inference,
                min_training=min_training,
                overallocation=overallocation,
                idempotency_key=idempotency_key,
            )
        )

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
        return await self._send(
            op.record_purchase(
                org_id,
                inference_amount=inference_amount,
                training_amount=training_amount,
                purchased_on=purchased_on,
                expires_at=expires_at,
                payer=payer,
                note=note,
                idempotency_key=idempotency_key,
            )
        )

    async def list_purchases(self, org_id: Id) -> list[PurchaseOut]:
        """An organization's purchases, expired ones included."""
        return await self._send(op.list_purchases(org_id))

    async def change_purchase_expiry(
        self,
        org_id: Id,
        purchase_id: Id,
        expires_at: datetime | date | None,
        *,
        idempotency_key: str | None = None,
    ) -> PurchaseOut:
        """Set, move or (with None) clear a purchase's expiry (platform operators)."""
        return await self._send(
            op.change_purchase_expiry(
                org_id, purchase_id, expires_at, idempotency_key=idempotency_key
            )
        )

    async def get_balance(self, org_id: Id) -> BalanceOut:
        """The token balance of both kinds: capacity, allocated, balance, used, reserved."""
        return await self._send(op.get_balance(org_id))

    async def create_api_key(
        self, org_id: Id, name: str, scopes: Sequence[str], *, idempotency_key: str | None = None
    ) -> ApiKeyCreated:
        """Create an API key; `.key` is in this answer only."""
        return await self._send(
            op.create_api_key(org_id, name, scopes, idempotency_key=idempotency_key)
        )

    async def list_api_keys(self, org_id: Id) -> list[ApiKeyOut]:
        """The organization's API keys (never the keys themselves)."""
        return await self._send(op.list_api_keys(org_id))

    async def revoke_api_key(
        self, org_id: Id, key_id: Id, *, idempotency_key: str | None = None
    ) -> ApiKeyOut:
        """Revoke an API key; it stops working at once."""
        return await self._send(op.revoke_api_key(org_id, key_id, idempotency_key=idempotency_key))

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
        return await self._send(
            op.list_users(
                org_id,
                search=search,
                status=status,
                role=role,
                near_limit=near_limit,
                sort=sort,
                order=order,
                limit=limit,
                offset=offset,
            )
        )

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
        return await self._send(
            op.create_user(
                org_id,
                email,
                name,
                role=role,
                max_tokens=max_tokens,
                max_train_tokens=max_train_tokens,
                password=password,
                idempotency_key=idempotency_key,
            )
        )

    async def get_user(self, user_id: Id) -> UserOut:
        """A user with their allowances and this period's usage."""
        return await self._send(op.get_user(user_id))

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
        return await self._send(
            op.update_user(
                user_id,
                name=name,
                role=role,
                max_tokens=max_tokens,
                max_train_tokens=max_train_tokens,
                expected_version=expected_version,
                reason=reason,
                idempotency_key=idempotency_key,
            )
        )

    async def deactivate_user(self, user_id: Id, *, idempotency_key: str | None = None) -> UserOut:
        """Deactivate a user: usage stops, reservations are released."""
        return await self._send(op.deactivate_user(user_id, idempotency_key=idempotency_key))

    async def reactivate_user(
        self,
        user_id: Id,
        *,
        max_tokens: int | None = None,
        max_train_tokens: int | None = None,
        idempotency_key: str | None = None,
    ) -> UserOut:
        """Reactivate a user with at least the organization's minimums."""
        return await self._send(
            op.reactivate_user(
                user_id,
                max_tokens=max_tokens,
                max_train_tokens=max_train_tokens,
                idempotency_key=idempotency_key,
            )
        )

    async def get_user_balance(self, user_id: Id) -> UserBalanceOut:
        """What a user may still use of each kind."""
        return await self._send(op.get_user_balance(user_id))

    async def get_usage_history(
        self, user_id: Id, *, granularity: Granularity = "day"
    ) -> UsageHistoryOut:
        """A user's usage per day of this period, or per month of the past year."""
        return await self._send(op.get_usage_history(user_id, granularity=granularity))

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
        return await self._send(
            op.change_allowances(
                org_id, rows, dry_run=dry_run, reason=reason, idempotency_key=idempotency_key
            )
        )

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
        return await self._send(
            op.list_journal(
                org_id,
                user=user,
                kind=kind,
                action=action,
                actor=actor,
                since=since,
                until=until,
                before_id=before_id,
                limit=limit,
            )
        )

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
        return await self._send(
            op.record_usage(
                user,
                kind,
                tokens,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                dataset=dataset,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def record_usage_batch(self, events: Sequence[UsageEventIn]) -> BatchOut:
        """Record up to 1,000 usage events; each is accepted or refused on its own."""
        return await self._send(op.record_usage_batch(events))

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
        return await self._send(
            op.reserve(
                user,
                kind,
                tokens,
                ttl_seconds=ttl_seconds,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                dataset=dataset,
                metadata=metadata,
                idempotency_key=idempotency_key,
            )
        )

    async def commit_reservation(
        self, reservation_id: Id, *, tokens: int | None = None, idempotency_key: str | None = None
    ) -> ReservationOut:
        """Commit what was used (default: all of it); the rest is released."""
        return await self._send(
            op.commit_reservation(reservation_id, tokens=tokens, idempotency_key=idempotency_key)
        )

    async def release_reservation(
        self, reservation_id: Id, *, idempotency_key: str | None = None
    ) -> ReservationOut:
        """Release a reservation without using it."""
        return await self._send(
            op.release_reservation(reservation_id, idempotency_key=idempotency_key)
        )

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, str]:
        """Whether the service and its database answer (needs no API key)."""
        return await self._send(op.health())
