from __future__ import annotations

from functools import partial

import httpx

from tests.helpers import Api, funded_org
from tokenadmin.auth import service as auth_service
from tokenadmin.database import Database
from tokenadmin.errors import Unauthenticated


async def test_openapi_describes_every_v1_route(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/v1/usage" in paths
    assert "/v1/organizations/{org_id}/allowances" in paths
    assert paths["/v1/usage"]["post"]["summary"]


async def test_healthz_answers_with_the_database_kind(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] == db.dialect


async def test_people_sign_in_with_email_and_password_without_hints(api: Api, db: Database) -> None:
    org = await funded_org(api)
    await api.user(org, "ana@example.com", password="correct horse battery")
    user = await db.read(
        lambda s: auth_service.authenticate(s, "ANA@example.com", "correct horse battery")
    )
    assert user.email == "ana@example.com"
    messages = set()
    for email, password in [
        ("ana@example.com", "wrong password!"),
        ("nobody@example.com", "x" * 12),
    ]:
        try:
            await db.read(partial(auth_service.authenticate, email=email, password=password))
        except Unauthenticated as error:
            messages.add((error.code, error.message))
        else:
            raise AssertionError("signed in with a wrong password")
    assert len(messages) == 1
