"""Short-lived access tokens, traded for a personal API key (`/user/get-token-with-api-key`).

A token is 256 random bits; only its SHA-256 is stored, with its key and its expiry
(table `access_tokens`). It authenticates as its key does (`api_key.service`), so a
revoked key, or a deactivated user's key, stops its tokens at once; an expired token is
refused, and forgotten by `forget_expired`.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.api_key import service as api_key_service
from tokenadmin.asksage import repository
from tokenadmin.auth.principal import Principal
from tokenadmin.errors import Unauthenticated
from tokenadmin.models import AccessToken

TOKEN_PREFIX = "ast_"
"""Tells an access token from an API key (`ta_...`) in the `x-access-tokens` header."""


@dataclass(frozen=True)
class Issued:
    token: str
    """The token itself: in this answer only, never stored."""
    expires_at: datetime


def hash_token(token: str) -> str:
    return api_key_service.hash_key(token)


def is_access_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX)


def issue(
    session: AsyncSession, api_key_id: uuid.UUID, now: datetime, lifetime: timedelta
) -> Issued:
    """A new token acting as the key `api_key_id` until `now + lifetime`."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = now + lifetime
    session.add(
        AccessToken(
            token_hash=hash_token(token),
            api_key_id=api_key_id,
            created_at=now,
            expires_at=expires_at,
        )
    )
    return Issued(token, expires_at)


async def authenticate(session: AsyncSession, token: str, now: datetime) -> Principal:
    """The caller a token acts for: its key's, while the token has not expired and the key
    still authenticates someone."""
    row = await repository.get(session, hash_token(token))
    if row is None or row.expires_at <= now:
        raise Unauthenticated(
            "The access token is not valid or has expired; get a new one from"
            " /user/get-token-with-api-key, or send your API key itself."
        )
    key = await repository.key_of(session, row)
    if key is None:
        raise Unauthenticated("The API key of this access token no longer exists.")
    return await api_key_service.authenticate_hash(session, key.key_hash)


async def forget_expired(session: AsyncSession, now: datetime) -> int:
    """Delete the tokens that have expired; how many."""
    return await repository.delete_expired(session, now)
