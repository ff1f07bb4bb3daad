"""A person's own API keys on their page (/me): create one (the secret shown once, on the
answer to the form) and revoke one. Members and administrators alike; operators have no
user of their own. Thin callers of api_key.service."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.api_key import service as api_key_service
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.web import WriterDep
from tokenadmin.deps import clock_of, db_of
from tokenadmin.errors import NotFound, TokenAdminError
from tokenadmin.models import User
from tokenadmin.schemas import Text
from tokenadmin.user import repository as user_repository

router = APIRouter(include_in_schema=False)


async def _me(session: AsyncSession, viewer: Viewer) -> User:
    user = None if viewer.user_id is None else await user_repository.get(session, viewer.user_id)
    if user is None:
        raise NotFound("Page not found.")  # operators have no keys of a user
    return user


def _act(request: Request, viewer: Viewer) -> Act:
    return Act(viewer.principal.actor, clock_of(request).now())


@router.post("/me/api-keys")
async def create_my_key(
    request: Request, viewer: WriterDep, name: Annotated[Text, Form(max_length=200)] = ""
) -> Response:
    """A key that acts as me; the page shows it once."""
    from tokenadmin.dashboard.member import my_page_response  # member imports this module

    async def work(session: AsyncSession) -> tuple[str, str]:
        key, secret = await api_key_service.create_personal(
            session, _act(request, viewer), await _me(session, viewer), name=name
        )
        return key.name, secret

    try:
        key_name, secret = await db_of(request).write(work)
    except TokenAdminError as error:
        if isinstance(error, NotFound):
            raise
        return await my_page_response(
            request, viewer, status_code=error.status_code, key_error=error.message
        )
    # The secret is in this answer only: it is never stored, so it can't be shown again.
    response = await my_page_response(request, viewer, new_key=(key_name, secret))
    response.headers["cache-control"] = "no-store"
    return response


@router.post("/me/api-keys/{key_id}/revoke")
async def revoke_my_key(request: Request, key_id: uuid.UUID, viewer: WriterDep) -> Response:
    """Revoke one of my keys; it stops working at once."""

    async def work(session: AsyncSession) -> None:
        me = await _me(session, viewer)
        await api_key_service.revoke_personal(session, _act(request, viewer), me, key_id)

    await db_of(request).write(work)
    return RedirectResponse("/me?notice=key-revoked#keys", status_code=303)
