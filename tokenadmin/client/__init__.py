"""The Python client of the tokenadmin REST API: `Client` (sync) and `AsyncClient` (async).

    from tokenadmin.client import Client, InsufficientTokens

    with Client("https://tokens.example.com", api_key="ta_...") as tokens:
        tokens.record_usage("ana@example.com", "inference", 1_500, idempotency_key=request_id)

Each operation is written once, in `AsyncClient` (`_async.py`); `Client` (`_sync.py`) is
generated from it. Both send the same `Call`, retry it with the same idempotency key, and
answer with the service's own response models. See docs/client.md.
"""

from tokenadmin.allowance.schemas import AllowancePreview, AllowanceRow
from tokenadmin.api_key.schemas import PersonalKeyCreated, PersonalKeyOut
from tokenadmin.catalog.schemas import (
    AccessOut,
    CatalogModelOut,
    ModelOut,
    OrganizationModelsOut,
    UpstreamOut,
)
from tokenadmin.client._async import AsyncClient
from tokenadmin.client._core import USER_AGENT, RetryPolicy
from tokenadmin.client._errors import (
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientTokens,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    TokenAdminAPIError,
    TokenAdminClientError,
    TokenAdminConnectionError,
    Unauthenticated,
    VersionConflict,
)
from tokenadmin.client._sync import Client
from tokenadmin.distribution.schemas import (
    DistributionOut,
    DistributionRow,
    KindDistribution,
    KindRule,
)
from tokenadmin.events.schemas import EventOut, EventPage
from tokenadmin.journal.schemas import JournalEntryOut, JournalPage
from tokenadmin.organization.schemas import (
    ApiKeyCreated,
    ApiKeyOut,
    BalanceOut,
    OrganizationOut,
    PurchaseOut,
)
from tokenadmin.policy.schemas import BoostOut, BoostPage, KindPolicyIn, PolicyOut, PolicyUpdateOut
from tokenadmin.report.schemas import (
    KindForecastOut,
    ListedUserForecast,
    OrgForecastOut,
    UsageReportOut,
    UsageRowOut,
    UserForecastOut,
)
from tokenadmin.token_request.schemas import TokenRequestOut, TokenRequestPage
from tokenadmin.tokens import Kind, Period
from tokenadmin.usage.schemas import (
    BatchOut,
    ReservationOut,
    UsageAccepted,
    UsageEvent,
    UsageFields,
)
from tokenadmin.user.csv_schemas import FieldChange, ImportResult, NewUserRow, RowProblem
from tokenadmin.user.schemas import UsageHistoryOut, UserBalanceOut, UserOut, UserPage

__all__ = [
    "USER_AGENT",
    "AccessOut",
    "AllowancePreview",
    "AllowanceRow",
    "ApiKeyCreated",
    "ApiKeyOut",
    "AsyncClient",
    "BalanceOut",
    "BatchOut",
    "BoostOut",
    "BoostPage",
    "CatalogModelOut",
    "Client",
    "Conflict",
    "DistributionOut",
    "DistributionRow",
    "EventOut",
    "EventPage",
    "FieldChange",
    "Forbidden",
    "IdempotencyKeyReused",
    "ImportResult",
    "InsufficientTokens",
    "InvalidRequest",
    "JournalEntryOut",
    "JournalPage",
    "Kind",
    "KindDistribution",
    "KindForecastOut",
    "KindPolicyIn",
    "KindRule",
    "ListedUserForecast",
    "ModelOut",
    "NewUserRow",
    "NotFound",
    "OrgForecastOut",
    "OrganizationModelsOut",
    "OrganizationOut",
    "Period",
    "PersonalKeyCreated",
    "PersonalKeyOut",
    "PolicyOut",
    "PolicyUpdateOut",
    "PurchaseOut",
    "RateLimited",
    "ReservationOut",
    "RetryPolicy",
    "RowProblem",
    "ServerError",
    "TokenAdminAPIError",
    "TokenAdminClientError",
    "TokenAdminConnectionError",
    "TokenRequestOut",
    "TokenRequestPage",
    "Unauthenticated",
    "UpstreamOut",
    "UsageAccepted",
    "UsageEvent",
    "UsageFields",
    "UsageHistoryOut",
    "UsageReportOut",
    "UsageRowOut",
    "UserBalanceOut",
    "UserForecastOut",
    "UserOut",
    "UserPage",
    "VersionConflict",
]
