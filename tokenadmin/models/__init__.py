"""The tables. Importing this package registers every model on Base.metadata."""

from tokenadmin.models.access_token import AccessToken
from tokenadmin.models.api_key import ApiKey
from tokenadmin.models.base import Base
from tokenadmin.models.dashboard import DashboardSession, Operator, SignInFailure
from tokenadmin.models.idempotency import IdempotencyRecord
from tokenadmin.models.job import JobLease
from tokenadmin.models.journal import JournalEntry
from tokenadmin.models.llm_model import LlmModel
from tokenadmin.models.organization import Organization
from tokenadmin.models.purchase import Purchase
from tokenadmin.models.reservation import Reservation
from tokenadmin.models.token_request import TokenRequest
from tokenadmin.models.user import User

__all__ = [
    "AccessToken",
    "ApiKey",
    "Base",
    "DashboardSession",
    "IdempotencyRecord",
    "JobLease",
    "JournalEntry",
    "LlmModel",
    "Operator",
    "Organization",
    "Purchase",
    "Reservation",
    "SignInFailure",
    "TokenRequest",
    "User",
]
