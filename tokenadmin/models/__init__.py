"""The tables. Importing this package registers every model on Base.metadata."""

from tokenadmin.models.access_token import AccessToken
from tokenadmin.models.api_key import ApiKey
from tokenadmin.models.base import Base
from tokenadmin.models.dashboard import DashboardSession, Operator, SignInFailure
from tokenadmin.models.event import AlertState, Event
from tokenadmin.models.idempotency import IdempotencyRecord
from tokenadmin.models.job import JobLease
from tokenadmin.models.journal import JournalEntry
from tokenadmin.models.llm_model import LlmModel
from tokenadmin.models.organization import Organization
from tokenadmin.models.policy import AllocationPolicy, Boost, PolicyMove
from tokenadmin.models.purchase import Purchase
from tokenadmin.models.reservation import Reservation
from tokenadmin.models.token_request import TokenRequest
from tokenadmin.models.user import AllowanceOrder, User
from tokenadmin.models.webhook import (
    EmailNotification,
    NotificationCursor,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "AccessToken",
    "AlertState",
    "AllocationPolicy",
    "AllowanceOrder",
    "ApiKey",
    "Base",
    "Boost",
    "DashboardSession",
    "EmailNotification",
    "Event",
    "IdempotencyRecord",
    "JobLease",
    "JournalEntry",
    "LlmModel",
    "NotificationCursor",
    "Operator",
    "Organization",
    "PolicyMove",
    "Purchase",
    "Reservation",
    "SignInFailure",
    "TokenRequest",
    "User",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
