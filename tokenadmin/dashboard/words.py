"""What the dashboard says for the machine names it shows: journal actions and kinds.

Pages read these words, never the codes (`period_reset`, `commit`); the API and the CSV
exports keep the codes, which are stable.
"""

from __future__ import annotations

ACTION_WORDS: dict[str, str] = {
    "allowance_changed": "Allowance changed",
    "api_key_created": "API key created",
    "api_key_revoked": "API key revoked",
    "commit": "Tokens used (after a reservation)",
    "model_access_changed": "Model access changed",
    "model_removed": "Model removed",
    "model_set": "Model set",
    "organization_created": "Organization created",
    "period_reset": "Monthly usage reset",
    "period_started": "New month started",
    "policy_changed": "Rules changed",
    "purchase": "Tokens purchased",
    "purchase_expired": "Purchase expired",
    "purchase_expiry_changed": "Purchase expiry changed",
    "release": "Reservation released",
    "reservation_expired": "Reservation expired",
    "reserve": "Tokens reserved",
    "token_request_approved": "Request approved",
    "token_request_denied": "Request denied",
    "token_request_withdrawn": "Request withdrawn",
    "tokens_requested": "Tokens requested",
    "upstream_changed": "Model provider changed",
    "usage": "Tokens used",
    "user_changed": "User changed",
    "user_created": "User added",
    "user_deactivated": "User deactivated",
    "user_reactivated": "User reactivated",
}

KIND_WORDS: dict[str, str] = {"inference": "Inference", "training": "Training"}


def action_words(action: str) -> str:
    """A journal action as a person reads it ("period_reset" → "Monthly usage reset")."""
    return ACTION_WORDS.get(action, action.replace("_", " ").capitalize())


def kind_words(kind: str | None) -> str:
    return KIND_WORDS.get(kind or "", kind or "")
