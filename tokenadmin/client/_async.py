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
from typing import Any, Literal, TypeVar

import httpx
from pydantic_core import to_jsonable_python

from tokenadmin.allowance.schemas import AllowancePreview, BatchPage, RevertPreview
from tokenadmin.api_key.schemas import PersonalKeyCreated, PersonalKeyOut
from tokenadmin.catalog.schemas import (
    AccessOut,
    CatalogModelOut,
    OrganizationModelsOut,
    UpstreamOut,
)
from tokenadmin.client._core import (
    DEFAULT_TIMEOUT,
    AllowanceRowIn,
    AsyncSleep,
    Call,
    Core,
    Granularity,
    Id,
    KindName,
    KindRuleIn,
    Order,
    PeriodName,
    RateIn,
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
from tokenadmin.distribution.schemas import DistributionOut
from tokenadmin.events.schemas import EventKindName, EventPage
from tokenadmin.jobs.schemas import JobOut
from tokenadmin.journal.schemas import JournalPage
from tokenadmin.organization.schemas import (
    ApiKeyCreated,
    ApiKeyOut,
    BalanceOut,
    OrganizationOut,
    PurchaseOut,
)
from tokenadmin.policy.schemas import (
    BoostOut,
    BoostPage,
    BoostState,
    KindPolicyIn,
    PolicyOut,
    PolicyUpdateOut,
)
from tokenadmin.policy.schemas import LogPage as PolicyLogPage
from tokenadmin.policy.schemas import RunOut as PolicyRunOut
from tokenadmin.report.schemas import OrgForecastOut, UsageReportOut, UserForecastOut
from tokenadmin.token_request.schemas import RequestState, TokenRequestOut, TokenRequestPage
from tokenadmin.usage.schemas import BatchOut, ReservationOut, UsageAccepted
from tokenadmin.user.csv_schemas import ImportResult
from tokenadmin.user.schemas import (
    Role,
    SortField,
    UsageHistoryOut,
    UserBalanceOut,
    UserOut,
    UserPage,
)
from tokenadmin.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    DeliveryState,
    WebhookOut,
    WebhookSecretOut,
)

T = TypeVar("T")

ORGANIZATION = "/v1/organizations/{}"
USER = "/v1/users/{}"
RESERVATION = "/v1/reservations/{}"
TOKEN_REQUEST = "/v1/token-requests/{}"
WEBHOOK = ORGANIZATION + "/webhooks/{}"
path_of = url
"""`url`, for the webhook methods whose `url` argument (the endpoint's) hides it."""
MODEL = "/v1/models/{}"


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
        auto_approve_enabled: bool | None = None,
        auto_approve_max_amount: int | None = None,
        auto_approve_max_per_period: int | None = None,
        auto_approve_max_allocated_percent: int | None = None,
        alert_thresholds: Sequence[int] | None = None,
        alert_balance_below_percent: int | None = None,
        idempotency_key: str | None = None,
    ) -> OrganizationOut:
        """Change an organization's name or policy (the auto-approval rule of token requests
        and the alert settings included); what you leave None stays."""
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

    async def list_allowance_batches(
        self, org_id: Id, *, before: str | None = None, limit: int | None = None
    ) -> BatchPage:
        """Saved allowance changes (batches), newest first, each with whether it was
        reverted; the next page starts before `next_before`."""
        params = query(locals(), "org_id")
        path = url(ORGANIZATION + "/allowance-batches", org_id)
        return await self._send(read(path, BatchPage, params))

    async def revert_allowance_batch(
        self,
        org_id: Id,
        batch: str,
        *,
        dry_run: bool = False,
        preview_token: str | None = None,
        idempotency_key: str | None = None,
    ) -> RevertPreview:
        """Revert a saved allowance change: every row that can still be reverted, in one
        change, or nothing; each other row says why. dry_run previews it; with
        preview_token, only if nothing changed since that preview (else Conflict
        `preview_stale`). Conflict `already_reverted`, `nothing_to_revert`; NotFound
        `batch_not_found`."""
        body = fields(locals(), "org_id", "batch")
        path = url(ORGANIZATION + "/allowance-batches/{}/revert", org_id, batch)
        return await self._send(write("POST", path, RevertPreview, idempotency_key, body))

    async def export_users_csv(self, org_id: Id) -> str:
        """The user table as CSV text, the columns an import reads back."""
        return await self._send(read(url(ORGANIZATION + "/users.csv", org_id), str))

    async def import_users_csv(
        self, org_id: Id, csv: str, *, dry_run: bool = False, idempotency_key: str | None = None
    ) -> ImportResult:
        """Create users and change allowances, names and roles from a CSV of the user table:
        all rows or none (a refused row raises InvalidRequest `import_refused`, listing every
        refused row); with dry_run, a preview that saves nothing and lists what is refused."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/users/import", org_id)
        return await self._send(write("POST", path, ImportResult, idempotency_key, body))

    # --- distribution ----------------------------------------------------------------------

    async def preview_distribution(
        self,
        org_id: Id,
        *,
        inference: KindRuleIn | None = None,
        training: KindRuleIn | None = None,
        users: Sequence[UserRef] | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> DistributionOut:
        """Preview distributing the balance of one kind or both (all active users, or those
        named): nothing is saved; pass the answer's `preview_token` to `distribute`."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/distribution/preview", org_id)
        return await self._send(write("POST", path, DistributionOut, idempotency_key, body))

    async def distribute(
        self,
        org_id: Id,
        *,
        inference: KindRuleIn | None = None,
        training: KindRuleIn | None = None,
        users: Sequence[UserRef] | None = None,
        reason: str | None = None,
        preview_token: str | None = None,
        idempotency_key: str | None = None,
    ) -> DistributionOut:
        """Distribute the balance, both kinds to every user in one atomic change or nothing;
        with preview_token, only if nothing changed since that preview (else Conflict
        `preview_stale`)."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/distribution", org_id)
        return await self._send(write("POST", path, DistributionOut, idempotency_key, body))

    # --- forecasts and usage reports -------------------------------------------------------

    async def get_forecast(
        self, org_id: Id, *, users: int | None = None, offset: int | None = None
    ) -> OrgForecastOut:
        """When the organization uses up each kind at its pace; with `users`, that many of
        its users who run out soonest (from `offset`)."""
        params = query(locals(), "org_id")
        return await self._send(
            read(url(ORGANIZATION + "/forecast", org_id), OrgForecastOut, params)
        )

    async def get_user_forecast(self, user_id: Id) -> UserForecastOut:
        """When a user runs out of each kind at their pace, with the data it rests on."""
        return await self._send(read(url(USER + "/forecast", user_id), UserForecastOut))

    async def get_usage_report(
        self,
        org_id: Id,
        *,
        granularity: Granularity | None = None,
        from_: date | None = None,
        until: date | None = None,
        user: UserRef | None = None,
        group_by: Literal["model"] | None = None,
    ) -> UsageReportOut:
        """Usage per day or month of the organization or one user, per kind and (group_by
        "model") per model, from `from_` to `until` (included)."""
        params = query(locals(), "org_id")
        path = url(ORGANIZATION + "/usage-report", org_id)
        return await self._send(read(path, UsageReportOut, params))

    async def usage_report_csv(
        self,
        org_id: Id,
        *,
        granularity: Granularity | None = None,
        from_: date | None = None,
        until: date | None = None,
        user: UserRef | None = None,
        group_by: Literal["model"] | None = None,
    ) -> str:
        """The usage report as CSV text: a header, then a row per day or month (and model)."""
        params = query(locals(), "org_id") | {"format": "csv"}
        path = url(ORGANIZATION + "/usage-report", org_id)
        return await self._send(read(path, str, params))

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

    # --- token requests --------------------------------------------------------------------

    async def ask_for_tokens(
        self,
        kind: KindName,
        amount: int,
        reason: str,
        *,
        user: UserRef | None = None,
        idempotency_key: str | None = None,
    ) -> TokenRequestOut:
        """Ask for more tokens of a kind, with a reason: pending until an administrator
        decides. A key acting for the organization's users names the `user`."""
        body = fields(locals())
        path = "/v1/token-requests"
        return await self._send(write("POST", path, TokenRequestOut, idempotency_key, body))

    async def list_token_requests(
        self,
        org_id: Id,
        *,
        state: RequestState | Literal["any"] | None = None,
        user_id: Id | None = None,
        kind: KindName | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> TokenRequestPage:
        """An organization's token requests, newest first: pending ones unless `state` says
        otherwise ("any": every state)."""
        params = query(locals(), "org_id")
        path = url(ORGANIZATION + "/token-requests", org_id)
        return await self._send(read(path, TokenRequestPage, params))

    async def list_user_token_requests(
        self,
        user_id: Id,
        *,
        state: RequestState | None = None,
        kind: KindName | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> TokenRequestPage:
        """A user's token requests in every state (or `state`), newest first."""
        params = query(locals(), "user_id")
        path = url(USER + "/token-requests", user_id)
        return await self._send(read(path, TokenRequestPage, params))

    async def get_token_request(self, request_id: Id) -> TokenRequestOut:
        """One token request, with its decision once there is one."""
        return await self._send(read(url(TOKEN_REQUEST, request_id), TokenRequestOut))

    async def approve_token_request(
        self,
        request_id: Id,
        *,
        amount: int | None = None,
        note: str | None = None,
        idempotency_key: str | None = None,
    ) -> TokenRequestOut:
        """Grant a pending request: the allowance rises by `amount` (default: the amount
        asked) through the allowance rules."""
        body = fields(locals(), "request_id")
        path = url(TOKEN_REQUEST + "/approve", request_id)
        return await self._send(write("POST", path, TokenRequestOut, idempotency_key, body))

    async def deny_token_request(
        self, request_id: Id, note: str, *, idempotency_key: str | None = None
    ) -> TokenRequestOut:
        """Refuse a pending request with a note the member reads."""
        body = fields(locals(), "request_id")
        path = url(TOKEN_REQUEST + "/deny", request_id)
        return await self._send(write("POST", path, TokenRequestOut, idempotency_key, body))

    async def withdraw_token_request(
        self, request_id: Id, *, idempotency_key: str | None = None
    ) -> TokenRequestOut:
        """Take back a pending request (the member, or a key acting for them)."""
        path = url(TOKEN_REQUEST + "/withdraw", request_id)
        return await self._send(write("POST", path, TokenRequestOut, idempotency_key))

    # --- background jobs --------------------------------------------------------------------

    async def list_jobs(self) -> list[JobOut]:
        """The background jobs: state, lag, last run, holder, last error (platform
        operators)."""
        return await self._send(read("/v1/jobs", list[JobOut]))

    # --- models: rates, access, upstreams ----------------------------------------------------

    async def list_models(self, org_id: Id) -> OrganizationModelsOut:
        """Every model with the rates that apply to the organization (its own or the
        platform's), whether its users may call it, its access list and its upstream."""
        return await self._send(read(url(ORGANIZATION + "/models", org_id), OrganizationModelsOut))

    async def list_platform_models(self) -> list[CatalogModelOut]:
        """The platform's default rates (platform operators)."""
        return await self._send(read("/v1/models", list[CatalogModelOut]))

    async def set_model_rate(
        self,
        org_id: Id,
        name: str,
        prompt_rate: RateIn,
        completion_rate: RateIn,
        *,
        upstream_base_url: str | None = None,
        upstream_api_key: str | None = None,
        upstream_model: str | None = None,
        max_output_tokens: int | None = None,
        idempotency_key: str | None = None,
    ) -> CatalogModelOut:
        """Set the organization's own rates of a model (exact decimals: Decimal, text or
        int), over the platform's, and optionally its upstream. An upstream key left None
        stays as stored."""
        body = fields(locals(), "org_id", "name")
        path = url(ORGANIZATION + "/models/{}", org_id, name)
        return await self._send(write("PUT", path, CatalogModelOut, idempotency_key, body))

    async def delete_model_rate(
        self, org_id: Id, name: str, *, idempotency_key: str | None = None
    ) -> CatalogModelOut:
        """Remove the organization's own rates of a model: the platform's apply again."""
        path = url(ORGANIZATION + "/models/{}", org_id, name)
        return await self._send(write("DELETE", path, CatalogModelOut, idempotency_key))

    async def set_platform_model_rate(
        self,
        name: str,
        prompt_rate: RateIn,
        completion_rate: RateIn,
        *,
        upstream_base_url: str | None = None,
        upstream_api_key: str | None = None,
        upstream_model: str | None = None,
        max_output_tokens: int | None = None,
        idempotency_key: str | None = None,
    ) -> CatalogModelOut:
        """Set a model's default rates and upstream for every organization (platform
        operators). An upstream key left None stays as stored."""
        body = fields(locals(), "name")
        return await self._send(
            write("PUT", url(MODEL, name), CatalogModelOut, idempotency_key, body)
        )

    async def delete_platform_model_rate(
        self, name: str, *, idempotency_key: str | None = None
    ) -> CatalogModelOut:
        """Take a model out of the platform's catalog (platform operators)."""
        return await self._send(write("DELETE", url(MODEL, name), CatalogModelOut, idempotency_key))

    async def set_model_access(
        self, org_id: Id, allowed: Sequence[str] | None, *, idempotency_key: str | None = None
    ) -> AccessOut:
        """Choose the models the organization's users may call (None: every model)."""
        body = {"allowed": None if allowed is None else list(allowed)}  # null is sent: all
        path = url(ORGANIZATION + "/model-access", org_id)
        return await self._send(write("PUT", path, AccessOut, idempotency_key, body))

    async def set_upstream(
        self,
        org_id: Id,
        base_url: str | None,
        *,
        api_key: str | None = None,
        clear_api_key: bool = False,
        idempotency_key: str | None = None,
    ) -> UpstreamOut:
        """Set the organization's upstream (None: none of its own). The key is write-only:
        left None it stays as stored, unless `clear_api_key`."""
        body: dict[str, Any] = {"base_url": base_url}
        if api_key is not None or clear_api_key:
            body["api_key"] = api_key
        path = url(ORGANIZATION + "/upstream", org_id)
        return await self._send(write("PUT", path, UpstreamOut, idempotency_key, body))

    # --- personal API keys -------------------------------------------------------------------

    async def create_personal_key(
        self, user_id: Id, name: str, *, idempotency_key: str | None = None
    ) -> PersonalKeyCreated:
        """Create a key that acts as the user, with their role; `.key` is in this answer only."""
        body = fields(locals(), "user_id")
        path = url(USER + "/api-keys", user_id)
        return await self._send(write("POST", path, PersonalKeyCreated, idempotency_key, body))

    async def list_personal_keys(self, user_id: Id) -> list[PersonalKeyOut]:
        """The user's own keys, revoked ones included (never the keys themselves)."""
        return await self._send(read(url(USER + "/api-keys", user_id), list[PersonalKeyOut]))

    async def revoke_personal_key(
        self, user_id: Id, key_id: Id, *, idempotency_key: str | None = None
    ) -> PersonalKeyOut:
        """Revoke one of the user's keys; it stops working at once."""
        path = url(USER + "/api-keys/{}", user_id, key_id)
        return await self._send(write("DELETE", path, PersonalKeyOut, idempotency_key))

    # --- metering --------------------------------------------------------------------------

    async def record_usage(
        self,
        user: UserRef,
        kind: KindName,
        tokens: int | None = None,
        *,
        model: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        dataset: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> UsageAccepted:
        """Record usage; raises InsufficientTokens when it does not fit what remains. Without
        `tokens`, `prompt_tokens` and `completion_tokens` are charged by the model's rates."""
        body = fields(locals())
        return await self._send(write("POST", "/v1/usage", UsageAccepted, idempotency_key, body))

    async def ingest(
        self,
        user: UserRef,
        *,
        tokens: int | None = None,
        text: str | None = None,
        dataset: str | None = None,
        document: str | None = None,
        idempotency_key: str | None = None,
    ) -> UsageAccepted:
        """Meter the training tokens of a document ingested outside the gateway: its token
        count, or its text (estimated); raises InsufficientTokens when it does not fit."""
        body = fields(locals())
        return await self._send(write("POST", "/v1/ingest", UsageAccepted, idempotency_key, body))

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

    # --- events (notifications) -------------------------------------------------------------

    async def list_events(
        self,
        org_id: Id,
        *,
        kind: EventKindName | None = None,
        user_id: Id | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> EventPage:
        """An organization's events, newest first: of a kind, of a user, since a time."""
        params = query(locals(), "org_id")
        return await self._send(read(url(ORGANIZATION + "/events", org_id), EventPage, params))

    async def list_user_events(
        self,
        user_id: Id,
        *,
        kind: EventKindName | None = None,
        since: datetime | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> EventPage:
        """A user's events, newest first (a member's own key: theirs)."""
        params = query(locals(), "user_id")
        return await self._send(read(url(USER + "/events", user_id), EventPage, params))

    # --- allocation policy and boosts ---------------------------------------------------------

    async def get_policy(self, org_id: Id) -> PolicyOut:
        """The allocation policy of both kinds (the defaults, off, for a kind never set), and
        what each preset fills in."""
        return await self._send(read(url(ORGANIZATION + "/policy", org_id), PolicyOut))

    async def set_policy(
        self,
        org_id: Id,
        *,
        inference: KindPolicyIn | Mapping[str, Any] | None = None,
        training: KindPolicyIn | Mapping[str, Any] | None = None,
        dry_run: bool | None = None,
        idempotency_key: str | None = None,
    ) -> PolicyUpdateOut:
        """Set one kind's policy or both: a preset fills in every number, numbers given apply
        over it. The answer previews what it would do now; dry_run only previews. Refusals:
        InvalidRequest `invalid_amount`, `invalid_percent`, `invalid_policy`, `invalid_bump`;
        RuleRefused `floor_above_ceiling`, `floor_below_minimum`."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/policy", org_id)
        return await self._send(write("PUT", path, PolicyUpdateOut, idempotency_key, body))

    async def preview_policy(self, org_id: Id) -> PolicyRunOut:
        """What the saved policy would do if run now: each move and each user left as is."""
        return await self._send(read(url(ORGANIZATION + "/policy/preview", org_id), PolicyRunOut))

    async def run_policy(
        self, org_id: Id, *, dry_run: bool | None = None, idempotency_key: str | None = None
    ) -> PolicyRunOut:
        """Run the policy now (reclamation included, whatever its schedule), in one change."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/policy/run", org_id)
        return await self._send(write("POST", path, PolicyRunOut, idempotency_key, body))

    async def get_policy_log(
        self, org_id: Id, *, limit: int | None = None, offset: int | None = None
    ) -> PolicyLogPage:
        """What the policy did, newest first: its moves, boosts and their ends."""
        params = query(locals(), "org_id")
        path = url(ORGANIZATION + "/policy/log", org_id)
        return await self._send(read(path, PolicyLogPage, params))

    async def add_boost(
        self,
        org_id: Id,
        user: UserRef,
        kind: KindName,
        amount: int,
        ends_at: datetime,
        *,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> BoostOut:
        """Raise a user's allowance of one kind until `ends_at`, at once; taken back by itself
        then (never below what they used). RuleRefused `exceeds_balance`; InvalidRequest
        `boost_end_in_past`, `boost_too_long`."""
        body = fields(locals(), "org_id")
        path = url(ORGANIZATION + "/boosts", org_id)
        return await self._send(write("POST", path, BoostOut, idempotency_key, body))

    async def list_boosts(
        self,
        org_id: Id,
        *,
        state: BoostState | Literal["any"] | None = None,
        user_id: Id | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> BoostPage:
        """Boosts, active ones first by their end (a member's own key: theirs)."""
        params = query(locals(), "org_id")
        return await self._send(read(url(ORGANIZATION + "/boosts", org_id), BoostPage, params))

    async def end_boost(
        self, org_id: Id, boost_id: Id, *, idempotency_key: str | None = None
    ) -> BoostOut:
        """End a boost now: taken back as at its end. Conflict `boost_already_ended`."""
        path = url(ORGANIZATION + "/boosts/{}/end", org_id, boost_id)
        return await self._send(write("POST", path, BoostOut, idempotency_key))

    # --- webhooks ---------------------------------------------------------------------------

    async def create_webhook(
        self,
        org_id: Id,
        url: str,
        *,
        kinds: Sequence[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookSecretOut:
        """Add a webhook endpoint; the answer holds its signing `secret`, shown this once.
        InvalidRequest `invalid_webhook_url`, `unknown_event_kind`; Conflict
        `too_many_webhooks`."""
        body = fields(locals(), "org_id")
        path = path_of(ORGANIZATION + "/webhooks", org_id)
        return await self._send(write("POST", path, WebhookSecretOut, idempotency_key, body))

    async def list_webhooks(self, org_id: Id) -> list[WebhookOut]:
        """The organization's webhook endpoints (never their secrets)."""
        return await self._send(read(url(ORGANIZATION + "/webhooks", org_id), list[WebhookOut]))

    async def get_webhook(self, org_id: Id, webhook_id: Id) -> WebhookOut:
        """One webhook endpoint (never its secret)."""
        return await self._send(read(url(WEBHOOK, org_id, webhook_id), WebhookOut))

    async def update_webhook(
        self,
        org_id: Id,
        webhook_id: Id,
        *,
        url: str | None = None,
        kinds: Sequence[str] | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookOut:
        """Change a webhook's URL, kinds (an empty list: every kind), description or whether
        it is enabled; None leaves a field as it is."""
        body = fields(locals(), "org_id", "webhook_id")
        path = path_of(WEBHOOK, org_id, webhook_id)
        return await self._send(write("PATCH", path, WebhookOut, idempotency_key, body))

    async def delete_webhook(
        self, org_id: Id, webhook_id: Id, *, idempotency_key: str | None = None
    ) -> WebhookOut:
        """Remove a webhook endpoint and its delivery log."""
        path = url(WEBHOOK, org_id, webhook_id)
        return await self._send(write("DELETE", path, WebhookOut, idempotency_key))

    async def rotate_webhook_secret(
        self, org_id: Id, webhook_id: Id, *, idempotency_key: str | None = None
    ) -> WebhookSecretOut:
        """A new signing secret for the webhook, shown this once."""
        path = url(WEBHOOK + "/rotate-secret", org_id, webhook_id)
        return await self._send(write("POST", path, WebhookSecretOut, idempotency_key))

    async def list_webhook_deliveries(
        self,
        org_id: Id,
        webhook_id: Id,
        *,
        state: DeliveryState | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> DeliveryPage:
        """A webhook's deliveries, newest first, each with every attempt and its answer."""
        params = query(locals(), "org_id", "webhook_id")
        path = url(WEBHOOK + "/deliveries", org_id, webhook_id)
        return await self._send(read(path, DeliveryPage, params))

    async def resend_webhook_delivery(
        self, delivery_id: Id, *, idempotency_key: str | None = None
    ) -> DeliveryOut:
        """Send a delivered or failed delivery again (a new sequence of attempts, due now).
        Conflict `delivery_pending`."""
        path = url("/v1/webhook-deliveries/{}/resend", delivery_id)
        return await self._send(write("POST", path, DeliveryOut, idempotency_key))

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> dict[str, str]:
        """Whether the service and its database answer (needs no API key)."""
        return await self._send(read("/healthz", dict[str, str]))
