from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.auth.principal import SCOPES, Principal
from tokenadmin.database import lock_organization
from tokenadmin.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from tokenadmin.journal.service import record
from tokenadmin.models import ApiKey, Organization, User

KEY_PREFIX = "ta_"


def hash_key(secret: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough; passwords use argon2 instead.
    return hashlib.sha256(secret.encode()).hexdigest()


async def create(
    session: AsyncSession,
    act: Act,
    *,
    org_id: uuid.UUID | None,
    name: str,
    scopes: Sequence[str],
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is never stored or shown again."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidRequest(
            f"Scopes must be chosen from {', '.join(SCOPES)}.", details={"unknown": unknown}
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=uuid.uuid4(),
        org_id=org_id,
        name=name,
        prefix=secret[:10],
        key_hash=hash_key(secret),
        scopes=" ".join(s for s in SCOPES if s in scopes),
        created_at=act.now,
        created_by=act.actor,
    )
    session.add(key)
    if org_id is not None:
        await _audit(session, act, org_id, "api_key_created", key)
    return key, secret


async def _audit(
    session: AsyncSession, act: Act, org_id: uuid.UUID, action: str, key: ApiKey
) -> None:
    # Entries without a user extend the organization's hash chain: one writer at a time.
    await lock_organization(session, org_id, shared=False)
    org = await session.get(Organization, org_id)
    if org is not None:
        details = {"key_id": str(key.id), "name": key.name, "scopes": key.scopes}
        if key.user_id is not None:
            details["user_id"] = str(key.user_id)
        record(session, act, org, action, details=details)


async def authenticate(session: AsyncSession, secret: str) -> Principal:
    return await authenticate_hash(session, hash_key(secret))


async def authenticate_hash(session: AsyncSession, key_hash: str) -> Principal:
    key = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )
    if key is None:
        raise Unauthenticated("The API key is not valid or was revoked.")
    return await principal_of(session, key)


async def principal_of(session: AsyncSession, key: ApiKey) -> Principal:
    """Who a live key acts as: a person's key acts as its user with the user's role today
    (a deactivated user's keys authenticate nobody); any other key with its scopes."""
    if key.user_id is not None:
        user = await session.get(User, key.user_id)
        if user is None or not user.active:
            raise Unauthenticated("The API key is not valid or was revoked.")
        return Principal(
            actor=f"user:{user.email}",
            org_id=user.org_id,
            scopes=role_scopes(user.role),
            user_id=user.id,
            key_id=key.id,
        )
    label = "operator" if key.org_id is None else "key"
    return Principal(
        actor=f"{label}:{key.name}",
        org_id=key.org_id,
        scopes=key.scope_set,
        key_id=key.id,
    )


def role_scopes(role: str) -> frozenset[str]:
    """What a person may do by role: an administrator manages their organization, a member
    acts for themself only (their own usage, allowances and requests)."""
    return frozenset({"admin", "read"}) if role == "admin" else frozenset()


async def create_personal(
    session: AsyncSession, act: Act, user: User, *, name: str
) -> tuple[ApiKey, str]:
    """A person's own key: it acts as the user, with their role at each use (the gateway and
    the Ask Sage API meter the user's own tokens with it). The secret is shown once."""
    if not user.active:
        raise Conflict(
            f"{user.email} is deactivated: reactivate them before giving them a key.",
            code="user_deactivated",
        )
    name = name.strip()
    if not 1 <= len(name) <= 200 or not name.isprintable():
        raise InvalidRequest(
            "A key's name is 1 to 200 printable characters.", details={"field": "name"}
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=uuid.uuid4(),
        org_id=user.org_id,
        user_id=user.id,
        name=name,
        prefix=secret[:10],
        key_hash=hash_key(secret),
        scopes="",
        created_at=act.now,
        created_by=act.actor,
    )
    session.add(key)
    await _audit(session, act, user.org_id, "api_key_created", key)
    return key, secret


async def list_personal(session: AsyncSession, user_id: uuid.UUID) -> Sequence[ApiKey]:
    statement = select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at)
    return (await session.scalars(statement)).all()


async def revoke_personal(session: AsyncSession, act: Act, user: User, key_id: uuid.UUID) -> ApiKey:
    """Revoke one of the user's own keys (another's key does not exist here)."""
    key = await session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id:
        raise NotFound("API key not found.", code="api_key_not_found")
    return await revoke(session, act, user.org_id, key_id)


async def is_live(session: AsyncSession, key_id: uuid.UUID) -> bool:
    """Whether the key exists and is not revoked, as of this transaction."""
    statement = select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    return await session.scalar(statement) is not None


async def list_keys(session: AsyncSession, org_id: uuid.UUID) -> Sequence[ApiKey]:
    """The organization's service keys (people's own keys are listed with their user)."""
    statement = (
        select(ApiKey)
        .where(ApiKey.org_id == org_id, ApiKey.user_id.is_(None))
        .order_by(ApiKey.created_at)
    )
    return (await session.scalars(statement)).all()


async def revoke(session: AsyncSession, act: Act, org_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or key.org_id != org_id:
        raise NotFound("API key not found.")
    if key.revoked_at is None:
        key.revoked_at = act.now
        await _audit(session, act, org_id, "api_key_revoked", key)
    return key
