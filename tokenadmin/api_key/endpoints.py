"""Personal API keys: a user's own keys, which act as the user with their role (the
gateway and the Ask Sage-compatible API meter the user's own tokens with them).

The user themself (with one of their keys) creates, lists and revokes them, as do the
administrators of the user's organization and platform operators; to anyone else the user
does not exist. The secret is in the creation's answer only.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service
from tokenadmin.api_key.schemas import PersonalKeyCreate, PersonalKeyCreated, PersonalKeyOut
from tokenadmin.auth.audit import AUDITED
from tokenadmin.auth.principal import Principal
from tokenadmin.deps import DatabaseDep, PrincipalDep, db_of, idempotent_write
from tokenadmin.models import User
from tokenadmin.user import service as user_service

router = APIRouter(prefix="/v1/users/{user_id}/api-keys", tags=["api keys"], dependencies=AUDITED)


async def _owner(session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> User:
    """The user whose keys these are, when the caller is them or an administrator of
    their organization."""
    user, _ = await user_service.visible(session, principal, user_id, "admin")
    return user


async def _check(request: Request, principal: Principal, user_id: uuid.UUID) -> None:
    # Checked before idempotent_write, which answers a replay without running the work.
    await db_of(request).read(lambda session: _owner(session, principal, user_id))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PersonalKeyCreated)
async def create_personal_key(
    user_id: uuid.UUID, body: PersonalKeyCreate, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Create a key that acts as the user; the key is in this answer only."""
    await _check(request, principal, user_id)

    async def work(session: AsyncSession, act: Act) -> PersonalKeyCreated:
        user = await _owner(session, principal, user_id)
        key, secret = await service.create_personal(session, act, user, name=body.name)
        return PersonalKeyCreated(**PersonalKeyOut.of(key).model_dump(), key=secret)

    return await idempotent_write(request, principal, work, status_code=201)


@router.get("", response_model=list[PersonalKeyOut])
async def list_personal_keys(
    user_id: uuid.UUID, principal: PrincipalDep, db: DatabaseDep
) -> list[PersonalKeyOut]:
    """The user's own keys, revoked ones included (never the keys themselves)."""

    async def work(session: AsyncSession) -> list[PersonalKeyOut]:
        user = await _owner(session, principal, user_id)
        return [PersonalKeyOut.of(key) for key in await service.list_personal(session, user.id)]

    return await db.read(work)


@router.delete("/{key_id}", response_model=PersonalKeyOut)
async def revoke_personal_key(
    user_id: uuid.UUID, key_id: uuid.UUID, request: Request, principal: PrincipalDep
) -> JSONResponse:
    """Revoke one of the user's keys; it stops working at once."""
    await _check(request, principal, user_id)

    async def work(session: AsyncSession, act: Act) -> PersonalKeyOut:
        user = await _owner(session, principal, user_id)
        return PersonalKeyOut.of(await service.revoke_personal(session, act, user, key_id))

    return await idempotent_write(request, principal, work)
