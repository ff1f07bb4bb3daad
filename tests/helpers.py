"""A thin test helper over the REST API: every call asserts the status it expects; and
an organization with tokens made through the services, for tests below the API."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.models import Organization
from tokenadmin.organization import service as organization_service


class Api:
    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self.client = client
        self.secret = key

    def as_key(self, key: str) -> Api:
        return Api(self.client, key)

    def headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.secret}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return headers

    async def call(
        self,
        method: str,
        path: str,
        *,
        expect: int | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        response = await self.client.request(
            method, path, json=json, params=params, headers=self.headers(idempotency_key)
        )
        if expect is not None:
            assert response.status_code == expect, (response.status_code, response.text)
        return response

    async def post(
        self, path: str, json: Any = None, *, expect: int | None = None, **kw: Any
    ) -> Any:
        return (await self.call("POST", path, json=json, expect=expect, **kw)).json()

    async def get(self, path: str, *, expect: int | None = 200, **kw: Any) -> Any:
        return (await self.call("GET", path, expect=expect, **kw)).json()

    async def patch(self, path: str, json: Any, *, expect: int | None = None, **kw: Any) -> Any:
        return (await self.call("PATCH", path, json=json, expect=expect, **kw)).json()

    # --- shortcuts ---------------------------------------------------------------------

    async def organization(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "Acme", **fields}
        result: dict[str, Any] = await self.post("/v1/organizations", body, expect=201)
        return result

    async def purchase(
        self, org_id: str, inference: int = 0, training: int = 0, **fields: Any
    ) -> Any:
        body = {"inference_amount": inference, "training_amount": training, **fields}
        return await self.post(f"/v1/organizations/{org_id}/purchases", body, expect=201)

    async def user(self, org_id: str, email: str | None = None, **fields: Any) -> dict[str, Any]:
        email = email or f"{uuid.uuid4().hex[:10]}@example.com"
        body = {"email": email, "name": email.split("@")[0].title(), **fields}
        result: dict[str, Any] = await self.post(
            f"/v1/organizations/{org_id}/users", body, expect=201
        )
        return result

    async def key(self, org_id: str, *scopes: str) -> str:
        body = {"name": f"key-{'-'.join(scopes)}", "scopes": list(scopes)}
        created = await self.post(f"/v1/organizations/{org_id}/api-keys", body, expect=201)
        secret: str = created["key"]
        return secret

    async def use(
        self,
        user: str,
        tokens: int,
        kind: str = "inference",
        *,
        key: str | None = None,
        expect: int | None = None,
        **fields: Any,
    ) -> httpx.Response:
        body = {"user": user, "kind": kind, "tokens": tokens, **fields}
        return await self.call(
            "POST",
            "/v1/usage",
            json=body,
            expect=expect,
            idempotency_key=key or uuid.uuid4().hex,
        )

    async def balance(self, org_id: str) -> Any:
        return await self.get(f"/v1/organizations/{org_id}/balance")

    async def allowances(
        self, org_id: str, *rows: dict[str, Any], expect: int | None = None, **fields: Any
    ) -> httpx.Response:
        body = {"changes": list(rows), **fields}
        return await self.call(
            "POST", f"/v1/organizations/{org_id}/allowances", json=body, expect=expect
        )


async def funded_org(
    api: Api, inference: int = 1_000_000, training: int = 100_000, **policy: Any
) -> str:
    """An organization with one purchase; returns its id."""
    org = await api.organization(**policy)
    await api.purchase(org["id"], inference, training)
    org_id: str = org["id"]
    return org_id


async def bought_org(
    session: AsyncSession,
    act: Act,
    name: str,
    *,
    inference: int,
    training: int = 0,
    **policy: Any,
) -> Organization:
    """A new organization with one purchase of `inference` and `training` tokens, made
    through the services in `session`'s transaction."""
    org = await organization_service.create(session, act, name=name, **policy)
    await organization_service.record_purchase(
        session,
        act,
        org,
        inference_amount=inference,
        training_amount=training,
        purchased_on=None,
        expires_at=None,
        payer="test",
        note="capacity",
    )
    return org
